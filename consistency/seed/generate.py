"""Generate a consistent data set, user by user, deterministic for a seed.

Rows are plain dicts keyed by the model field's ``attname`` (``user_id``,
``metadata``); the writers turn them into COPY rows, model instances, events,
vectors and cache payloads. Every value comes from one ``random.Random``
stream (and pools from a seeded Faker), consumed in user order, so the same
seed gives the same ids whatever the batch size.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Model

from consistency.auth_service.models import AuthAuditLog, AuthSession, AuthUser, PasswordResetToken
from consistency.backend.models import (
    Analysis,
    AnalysisResult,
    Assistant,
    CorpusAuditLog,
    Message,
    Run,
    Secret,
    Step,
    Thread,
    ToolUsageLog,
    User,
)
from consistency.seed import pools as p

Row = dict[str, Any]

AUTH_MODELS: tuple[type[Model], ...] = (AuthUser, AuthSession, AuthAuditLog, PasswordResetToken)
BACKEND_MODELS: tuple[type[Model], ...] = (
    User,
    Secret,
    Assistant,
    Thread,
    Message,
    Run,
    Step,
    ToolUsageLog,
    CorpusAuditLog,
    Analysis,
    AnalysisResult,
)
SEEDED_MODELS = AUTH_MODELS + BACKEND_MODELS
# Tables whose integer ids the seed assigns itself (so ClickHouse can carry them).
AUTO_ID_MODELS: tuple[type[Model], ...] = (AuthAuditLog, Secret, ToolUsageLog, CorpusAuditLog, AnalysisResult)

_BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_FERNET_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_DAY = 86_400


@dataclass
class Batch:
    """The rows of a run of consecutive users, per model."""

    rows: dict[type[Model], list[Row]] = field(default_factory=lambda: defaultdict(list))
    users: int = 0

    def count(self) -> int:
        return sum(len(rows) for rows in self.rows.values())


class Generator:
    """Produces users and everything they own; call ``batch(n)`` repeatedly."""

    def __init__(self, seed: int, now: dt.datetime) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.pools = p.build_pools(seed)
        self.now = now.replace(microsecond=0)
        self.now_epoch = int(self.now.timestamp())
        self.user_number = 0
        self.next_id: dict[type[Model], int] = dict.fromkeys(AUTO_ID_MODELS, 1)

    # ids -----------------------------------------------------------------
    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def openai_id(self, prefix: str) -> str:
        """An OpenAI-style id: ``prefix`` and 24 hexadecimal characters."""
        return f"{prefix}_{self.rng.getrandbits(96):024x}"

    def auto_id(self, model: type[Model]) -> int:
        value = self.next_id[model]
        self.next_id[model] = value + 1
        return value

    # values ----------------------------------------------------------------
    def past(self, days: float, after: dt.datetime | None = None) -> dt.datetime:
        """A second-precision moment in the last ``days`` days (not before ``after``)."""
        start = self.now - dt.timedelta(days=days)
        if after is not None and after > start:
            start = after
        span = max(int((self.now - start).total_seconds()), 1)
        return start + dt.timedelta(seconds=self.rng.randrange(span))

    def bcrypt_like(self) -> str:
        return "$2b$12$" + "".join(self.rng.choices(_BCRYPT_ALPHABET, k=53))

    def sha256_like(self) -> str:
        return f"{self.rng.getrandbits(256):064x}"

    def ip(self) -> str:
        r = self.rng.getrandbits(32)
        return f"{(r >> 24) % 223 + 1}.{(r >> 16) & 255}.{(r >> 8) & 255}.{r & 255}"

    # the data set ------------------------------------------------------------
    def batch(self, users: int) -> Batch:
        """The next ``users`` users with all their rows."""
        out = Batch()
        for _ in range(users):
            self._user(out.rows)
        out.users = users
        return out

    def _user(self, rows: dict[type[Model], list[Row]]) -> None:
        rng, pools = self.rng, self.pools
        number = self.user_number
        self.user_number += 1
        uid = self.uuid()
        first, last = rng.choice(pools.first_names), rng.choice(pools.last_names)
        # The user number keeps emails unique however the names repeat.
        email = f"{first}.{last}.{number}@{rng.choice(pools.domains)}".lower()
        full_name = f"{first} {last}"
        created = self.past(730)
        updated = self.past(30, after=created)
        is_active = rng.random() < 0.95
        local = rng.random() < 0.7
        provider = "local" if local else rng.choice(("google", "github", "microsoft"))
        password = self.bcrypt_like() if local else None
        rows[AuthUser].append(
            {
                "id": uid,
                "email": email,
                "full_name": full_name,
                "hashed_password": password,
                "auth_provider": provider,
                "provider_user_id": None if local else str(rng.getrandbits(63)),
                "provider_data": {} if local else {"locale": "en", "picture_id": f"{rng.getrandbits(64):x}"},
                "is_active": is_active,
                "is_verified": rng.random() < 0.9,
                "created_at": created,
                "updated_at": updated,
                "last_login_at": self.past(30, after=created) if rng.random() < 0.85 else None,
                "failed_login_attempts": 0 if rng.random() < 0.9 else rng.randint(1, 4),
                "locked_until": None,
            }
        )
        tier = rng.choices(("free", "pro", "team", "enterprise"), weights=(70, 20, 7, 3))[0]
        role = "admin" if rng.random() < 0.01 else ("developer" if rng.random() < 0.1 else "user")
        rows[User].append(
            {
                "id": uid,
                "email": email,
                "email_before_lowercase": None,
                "full_name": full_name,
                "hashed_password": password,
                "is_active": is_active,
                "is_superuser": role == "admin",
                "is_developer": role == "developer",
                "role": role,
                "permissions": {"threads": ["read", "write"]} if role == "user" else {"all": True},
                "plan_tier": tier,
                "plan_started_at": None if tier == "free" else self.past(365, after=created),
                "plan_expires_at": None
                if tier == "free"
                else self.now + dt.timedelta(days=rng.randint(1, 365)),
                "feature_flags": {"beta_tools": rng.random() < 0.2},
                "created_at": created,
                "updated_at": updated,
            }
        )
        self._auth_extras(rows, uid, created, provider)
        assistant = self._assistant(rows, uid)
        self._threads(rows, uid, created, assistant)
        self._usage(rows, uid, created)

    def _auth_extras(
        self, rows: dict[type[Model], list[Row]], uid: str, created: dt.datetime, provider: str
    ) -> None:
        rng, pools = self.rng, self.pools
        for _ in range(rng.randint(1, 3)):
            started = self.past(60, after=created)
            revoked = rng.random() < 0.15
            rows[AuthSession].append(
                {
                    "id": self.uuid(),
                    "user_id": uid,
                    "refresh_token_hash": self.sha256_like(),
                    "ip_address": self.ip(),
                    "user_agent": rng.choice(pools.user_agents),
                    "device_id": f"{rng.getrandbits(64):016x}",
                    "created_at": started,
                    "expires_at": started + dt.timedelta(days=30),
                    "last_activity": self.past(7, after=started),
                    "is_active": not revoked,
                    "revoked_at": self.past(7, after=started) if revoked else None,
                }
            )
        for _ in range(rng.randint(1, 4)):
            event = rng.choice(p.AUDIT_EVENTS)
            rows[AuthAuditLog].append(
                {
                    "id": self.auto_id(AuthAuditLog),
                    "user_id": uid,
                    "event_type": event,
                    "ip_address": self.ip(),
                    "user_agent": rng.choice(pools.user_agents),
                    "details": {"provider": provider},
                    "success": event != "login_failed",
                    "created_at": self.past(90, after=created),
                }
            )
        if rng.random() < 0.2:
            issued = self.past(30, after=created)
            rows[PasswordResetToken].append(
                {
                    "id": self.uuid(),
                    "user_id": uid,
                    "token_hash": self.sha256_like(),
                    "created_at": issued,
                    "expires_at": issued + dt.timedelta(hours=1),
                    "used_at": issued + dt.timedelta(minutes=rng.randint(1, 59))
                    if rng.random() < 0.5
                    else None,
                }
            )
        for key in rng.sample(p.SECRET_KEYS, rng.randint(0, 2)):
            stamp = self.past(365, after=created)
            rows[Secret].append(
                {
                    "id": self.auto_id(Secret),
                    "user_id": uid,
                    "key": key,
                    "encrypted_value": "gAAAAA" + "".join(rng.choices(_FERNET_ALPHABET, k=94)),
                    "created_at": stamp,
                    "updated_at": stamp,
                }
            )

    def _assistant(self, rows: dict[type[Model], list[Row]], uid: str) -> Row | None:
        rng = self.rng
        if rng.random() >= 0.3:
            return None
        row: Row = {
            "id": self.openai_id("asst"),
            "object": "assistant",
            "created_at": self.now_epoch - rng.randrange(365 * _DAY),
            "user_id": uid,
            "name": rng.choice(self.pools.phrases),
            "description": rng.choice(self.pools.sentences),
            "model": rng.choice(p.MODELS),
            "instructions": rng.choice(self.pools.sentences),
            "tools": [{"type": "code_interpreter"}] if rng.random() < 0.5 else [{"type": "file_search"}],
            "metadata": {"user_id": uid},
        }
        rows[Assistant].append(row)
        return row

    def _threads(
        self, rows: dict[type[Model], list[Row]], uid: str, created: dt.datetime, assistant: Row | None
    ) -> None:
        rng, sentences = self.rng, self.pools.sentences
        first_epoch = int(created.timestamp())
        for _ in range(rng.randint(1, 3)):
            thread_id = self.openai_id("thread")
            at = rng.randint(first_epoch, self.now_epoch)
            rows[Thread].append(
                {
                    "id": thread_id,
                    "object": "thread",
                    "created_at": at,
                    "user_id": uid,
                    "metadata": {"user_id": uid},
                }
            )
            run_id = None
            if assistant is not None and rng.random() < 0.7:
                run_id = self._run(rows, thread_id, assistant, at)
            for index in range(rng.randint(2, 6)):
                role = "user" if index % 2 == 0 else "assistant"
                text = rng.choice(sentences)
                rows[Message].append(
                    {
                        "id": self.openai_id("msg"),
                        "object": "thread.message",
                        "created_at": at + index * 30,
                        "thread_id": thread_id,
                        "role": role,
                        "content": [{"type": "text", "text": {"value": text, "annotations": []}}],
                        "assistant_id": assistant["id"] if role == "assistant" and assistant else None,
                        "run_id": run_id if role == "assistant" else None,
                        "metadata": {},
                        "embedding_id": self.openai_id("emb"),
                    }
                )

    def _run(self, rows: dict[type[Model], list[Row]], thread_id: str, assistant: Row, at: int) -> str:
        rng = self.rng
        run_id = self.openai_id("run")
        status = rng.choices(("completed", "failed", "cancelled"), weights=(90, 7, 3))[0]
        prompt, completion = rng.randint(50, 4000), rng.randint(20, 1500)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        rows[Run].append(
            {
                "id": run_id,
                "object": "thread.run",
                "created_at": at,
                "thread_id": thread_id,
                "assistant_id": assistant["id"],
                "status": status,
                "model": assistant["model"],
                "instructions": assistant["instructions"],
                "started_at": at + 1,
                "completed_at": at + rng.randint(2, 120),
                "usage": usage,
                "metadata": {},
            }
        )
        for kind in ("message_creation", "tool_calls")[: rng.randint(1, 2)]:
            rows[Step].append(
                {
                    "id": self.openai_id("step"),
                    "object": "thread.run.step",
                    "created_at": at + 1,
                    "run_id": run_id,
                    "thread_id": thread_id,
                    "assistant_id": assistant["id"],
                    "type": kind,
                    "status": status,
                    "step_details": {"type": kind},
                    "usage": usage,
                }
            )
        return run_id

    def _usage(self, rows: dict[type[Model], list[Row]], uid: str, created: dt.datetime) -> None:
        rng = self.rng
        for _ in range(rng.randint(2, 8)):
            tool, category = rng.choice(p.TOOLS)
            tokens = rng.randint(0, 5000)
            rows[ToolUsageLog].append(
                {
                    "id": self.auto_id(ToolUsageLog),
                    "user_id": uid,
                    "tool_name": tool,
                    "category": category,
                    "execution_time_ms": rng.randint(5, 30_000),
                    "tokens_used": tokens,
                    "cost_cents": tokens // 250,
                    "status": "success" if rng.random() < 0.95 else "error",
                    "created_at": self.past(180, after=created),
                }
            )
        for _ in range(rng.choice((0, 0, 1, 2))):
            rows[CorpusAuditLog].append(
                {
                    "id": self.auto_id(CorpusAuditLog),
                    "user_id": uid,
                    "action": rng.choice(p.CORPUS_ACTIONS),
                    "corpus_id": f"corpus_{rng.getrandbits(64):016x}",
                    "details": {"documents": rng.randint(1, 200)},
                    "created_at": self.past(180, after=created),
                }
            )
        if rng.random() < 0.4:
            started = self.past(90, after=created)
            analysis_id = uuid.UUID(int=self.rng.getrandbits(128), version=4)
            kind = rng.choice(p.ANALYSIS_KINDS)
            rows[Analysis].append(
                {
                    "id": analysis_id,
                    "user_id": uid,
                    "name": f"{kind} analysis",
                    "status": rng.choice(("completed", "completed", "running", "failed")),
                    "config": {"kind": kind, "window_days": rng.choice((7, 30, 90))},
                    "created_at": started,
                    "updated_at": started,
                }
            )
            for _ in range(rng.randint(1, 3)):
                rows[AnalysisResult].append(
                    {
                        "id": self.auto_id(AnalysisResult),
                        "analysis_id": analysis_id,
                        "result_type": kind,
                        "data": {"items": rng.randint(0, 50)},
                        "score": round(rng.random(), 4),
                        "created_at": started,
                    }
                )
