"""Models for engine tests: one shape, four key types. Unmanaged: fixtures create the
tables on whichever aliases a test compares."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone


class Shape(models.Model):
    name = models.CharField(max_length=200, null=True, blank=True)
    email = models.CharField(max_length=200, null=True, blank=True)
    amount = models.DecimalField(max_digits=12, decimal_places=2, null=True)
    active = models.BooleanField(default=True)
    at = models.DateTimeField(null=True)
    data = models.JSONField(null=True)
    token_hash = models.CharField(max_length=200, null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        abstract = True


class IntRow(Shape):
    id = models.BigIntegerField(primary_key=True)

    class Meta:
        managed = False
        db_table = "t_int_rows"


class StrRow(Shape):
    id = models.CharField(primary_key=True, max_length=64)

    class Meta:
        managed = False
        db_table = "t_str_rows"


class UuidRow(Shape):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)

    class Meta:
        managed = False
        db_table = "t_uuid_rows"


class CompositeRow(Shape):
    id = models.BigAutoField(primary_key=True)
    region = models.CharField(max_length=16)
    code = models.IntegerField()

    class Meta:
        managed = False
        db_table = "t_composite_rows"
        constraints = [models.UniqueConstraint(fields=["region", "code"], name="t_composite_key")]


class Parent(models.Model):
    id = models.CharField(primary_key=True, max_length=64)

    class Meta:
        managed = False
        db_table = "t_parents"


class Child(models.Model):
    id = models.BigIntegerField(primary_key=True)
    parent = models.ForeignKey(Parent, on_delete=models.DO_NOTHING, db_constraint=False, null=True)

    class Meta:
        managed = False
        db_table = "t_children"


TEST_MODELS = (IntRow, StrRow, UuidRow, CompositeRow, Parent, Child)
