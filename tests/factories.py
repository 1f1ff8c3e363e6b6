"""factory-boy factories for every model of both services.

Auth factories write to the ``auth`` alias (``Meta.database``); backend ones to
``default``. A backend ``UserFactory`` is independent of the auth user: tests
that need the pair build both with the same id (see ``user_pair``). Call
``Factory.create()`` rather than ``Factory()`` for a typed model instance.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import factory
from django.utils import timezone

from consistency.auth_service import models as auth
from consistency.backend import models as backend


def _in(days: int) -> Any:
    return factory.LazyFunction(lambda: timezone.now() + dt.timedelta(days=days))


class AuthUserFactory(factory.django.DjangoModelFactory[auth.AuthUser]):
    class Meta:
        model = auth.AuthUser
        database = "auth"

    id = factory.Faker("uuid4")
    email = factory.Sequence(lambda n: f"user{n}@example.com")
    full_name = factory.Faker("name")
    hashed_password = factory.Sequence(lambda n: f"$2b$12${n:053d}")
    auth_provider = auth.AuthProvider.LOCAL
    is_verified = True


class AuthSessionFactory(factory.django.DjangoModelFactory[auth.AuthSession]):
    class Meta:
        model = auth.AuthSession
        database = "auth"

    id = factory.Faker("uuid4")
    user = factory.SubFactory(AuthUserFactory)
    refresh_token_hash = factory.Faker("sha256")
    ip_address = factory.Faker("ipv4")
    user_agent = factory.Faker("user_agent")
    expires_at = _in(30)


class AuthAuditLogFactory(factory.django.DjangoModelFactory[auth.AuthAuditLog]):
    class Meta:
        model = auth.AuthAuditLog
        database = "auth"

    user = factory.SubFactory(AuthUserFactory)
    event_type = "login"
    ip_address = factory.Faker("ipv4")


class PasswordResetTokenFactory(factory.django.DjangoModelFactory[auth.PasswordResetToken]):
    class Meta:
        model = auth.PasswordResetToken
        database = "auth"

    id = factory.Faker("uuid4")
    user = factory.SubFactory(AuthUserFactory)
    token_hash = factory.Faker("sha256")
    expires_at = _in(1)


class UserFactory(factory.django.DjangoModelFactory[backend.User]):
    class Meta:
        model = backend.User

    id = factory.Faker("uuid4")
    email = factory.Sequence(lambda n: f"user{n}@example.com")
    full_name = factory.Faker("name")
    hashed_password = factory.Sequence(lambda n: f"$2b$12${n:053d}")


class SecretFactory(factory.django.DjangoModelFactory[backend.Secret]):
    class Meta:
        model = backend.Secret

    user = factory.SubFactory(UserFactory)
    key = factory.Sequence(lambda n: f"api_key_{n}")
    encrypted_value = factory.Sequence(lambda n: f"gAAAAA{n:094d}")


class AssistantFactory(factory.django.DjangoModelFactory[backend.Assistant]):
    class Meta:
        model = backend.Assistant

    id = factory.Sequence(lambda n: f"asst_{n:024x}")
    user = factory.SubFactory(UserFactory)
    name = factory.Faker("catch_phrase")
    model = "gpt-4o"


class ThreadFactory(factory.django.DjangoModelFactory[backend.Thread]):
    class Meta:
        model = backend.Thread

    id = factory.Sequence(lambda n: f"thread_{n:024x}")
    user = factory.SubFactory(UserFactory)
    metadata = factory.LazyAttribute(lambda o: {"user_id": o.user.id})


class MessageFactory(factory.django.DjangoModelFactory[backend.Message]):
    class Meta:
        model = backend.Message

    id = factory.Sequence(lambda n: f"msg_{n:024x}")
    thread = factory.SubFactory(ThreadFactory)
    role = "user"
    content = factory.LazyFunction(lambda: [{"type": "text", "text": {"value": "hello", "annotations": []}}])
    embedding_id = factory.Sequence(lambda n: f"emb_{n:024x}")


class RunFactory(factory.django.DjangoModelFactory[backend.Run]):
    class Meta:
        model = backend.Run

    id = factory.Sequence(lambda n: f"run_{n:024x}")
    thread = factory.SubFactory(ThreadFactory)
    assistant = factory.SubFactory(AssistantFactory, user=factory.SelfAttribute("..thread.user"))
    status = "completed"
    model = "gpt-4o"


class StepFactory(factory.django.DjangoModelFactory[backend.Step]):
    class Meta:
        model = backend.Step

    id = factory.Sequence(lambda n: f"step_{n:024x}")
    run = factory.SubFactory(RunFactory)
    thread = factory.SelfAttribute("run.thread")
    assistant = factory.SelfAttribute("run.assistant")
    type = "message_creation"
    status = "completed"


class ToolUsageLogFactory(factory.django.DjangoModelFactory[backend.ToolUsageLog]):
    class Meta:
        model = backend.ToolUsageLog

    user = factory.SubFactory(UserFactory)
    tool_name = "web_search"
    category = "search"
    execution_time_ms = 120
    tokens_used = 500
    cost_cents = 2


class CorpusAuditLogFactory(factory.django.DjangoModelFactory[backend.CorpusAuditLog]):
    class Meta:
        model = backend.CorpusAuditLog

    user = factory.SubFactory(UserFactory)
    action = "upload"
    corpus_id = factory.Sequence(lambda n: f"corpus_{n}")


class AnalysisFactory(factory.django.DjangoModelFactory[backend.Analysis]):
    class Meta:
        model = backend.Analysis

    user = factory.SubFactory(UserFactory)
    name = "sentiment analysis"


class AnalysisResultFactory(factory.django.DjangoModelFactory[backend.AnalysisResult]):
    class Meta:
        model = backend.AnalysisResult

    analysis = factory.SubFactory(AnalysisFactory)
    result_type = "sentiment"
    score = 0.5


def user_pair(**fields: Any) -> tuple[auth.AuthUser, backend.User]:
    """An auth user and its backend copy with the same id, email, name and status."""
    auth_user = AuthUserFactory.create(**fields)
    backend_user = UserFactory.create(
        id=auth_user.id,
        email=auth_user.email,
        full_name=auth_user.full_name,
        is_active=auth_user.is_active,
        hashed_password=auth_user.hashed_password,
    )
    return auth_user, backend_user
