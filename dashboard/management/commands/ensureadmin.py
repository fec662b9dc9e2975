"""Make sure an admin account exists, without ever using a fixed password."""

from __future__ import annotations

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Create the superuser ADMIN_USERNAME (default 'admin') if missing. Its password is ADMIN_PASSWORD, "
        "or generated and printed once. With ADMIN_PASSWORD set, an existing account's password is set to it "
        "when it differs (an unchanged password keeps everyone signed in)."
    )

    def handle(self, *args, **options) -> None:
        User = get_user_model()
        username = os.environ.get("ADMIN_USERNAME", "admin")
        password = os.environ.get("ADMIN_PASSWORD", "")
        user = User.objects.filter(username=username).first()
        if user is not None:
            if password and user.check_password(password):
                # Setting it again would store a new salt, which ends every session of the account.
                self.stdout.write(f"Admin {username!r} exists; its password is ADMIN_PASSWORD already.")
            elif password:
                user.set_password(password)
                user.save(update_fields=["password"])
                self.stdout.write(f"Admin {username!r} exists; password set from ADMIN_PASSWORD.")
            else:
                self.stdout.write(f"Admin {username!r} exists; keeping its password.")
            return
        generated = not password
        password = password or secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        if generated:
            self.stdout.write(self.style.WARNING(f"Created admin {username!r} with password: {password}  (shown once)"))
        else:
            self.stdout.write(f"Created admin {username!r} with the password from ADMIN_PASSWORD.")
