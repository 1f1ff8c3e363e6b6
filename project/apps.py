"""The project's admin site: Django's, with an index page that links the drift review dashboard.

Django documents changing the admin index by a custom ``AdminSite`` whose ``index_template``
is set, made the default site by an ``AdminConfig`` with ``default_site`` that replaces
``django.contrib.admin`` in ``INSTALLED_APPS``. (An app's own ``admin/index.html`` loses to
Django's because ``django.contrib.admin`` comes first there.) Nothing else changes:
``admin.site`` is still the site every ``admin.py`` registers on.

This module is imported while the apps load, so it imports no models.
"""

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig


class AdminSite(admin.AdminSite):
    index_template = "admin/consistency/index.html"


class ProjectAdminConfig(AdminConfig):
    default_site = "project.apps.AdminSite"
