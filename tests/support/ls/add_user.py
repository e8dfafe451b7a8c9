"""Add a user to the organization of the provisioned admin, from the Django side.

Usage (same environment as mint_pat.py):

    python add_user.py EMAIL USERNAME

The user gets a random unusable password (tests act as them through PATs only) and the admin's
organization as their active one. Prints the new user's id.
"""

import contextlib
import io
import os
import sys


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    email, username = sys.argv[1], sys.argv[2]
    import label_studio

    sys.path.insert(0, os.path.dirname(label_studio.__file__))
    os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'test_settings')
    with contextlib.redirect_stdout(io.StringIO()) as noise:
        import django

        django.setup()
        from users.models import User

        admin = User.objects.get(email='admin@example.com')
        org = admin.active_organization
        user = User.objects.create_user(email=email, username=username)
        user.set_unusable_password()
        org.add_user(user)
        user.active_organization = org
        user.save()
    sys.stdout.write('%d\n' % user.id)
    sys.stderr.write(noise.getvalue())
    return 0


if __name__ == '__main__':
    sys.exit(main())
