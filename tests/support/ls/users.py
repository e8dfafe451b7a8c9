"""Test users for the gate's proof, from the Django side (Label Studio 1.23.2 has no admin API for these).

Usage (with the venv's python and the server's env, as mint_pat.py):

    python users.py create EMAIL PASSWORD same-org|own-org   # prints {"id": N, "organization": M}
    python users.py deactivate EMAIL                          # is_active = False

`same-org` adds the user to the organization of admin@example.com (the provisioned superuser), as an invitation
would; `own-org` gives the user an organization of their own, as a fresh signup does (users/functions/common.py
save_user). Deactivating is what Django's admin "active" checkbox does; Label Studio's authentication classes
then refuse the user's tokens (DRF's JWT and token authentication check is_active).
"""

import contextlib
import io
import json
import os
import sys


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[1] not in ('create', 'deactivate'):
        print(__doc__, file=sys.stderr)
        return 2
    import label_studio

    sys.path.insert(0, os.path.dirname(label_studio.__file__))
    os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'test_settings')
    with contextlib.redirect_stdout(io.StringIO()) as noise:
        import django

        django.setup()
        from organizations.models import Organization
        from users.models import User

        out = {}
        if sys.argv[1] == 'create':
            email, password, where = sys.argv[2], sys.argv[3], sys.argv[4]
            user = User.objects.create_user(email=email, password=password, username=email.split('@')[0])
            if where == 'own-org':
                org = Organization.create_organization(created_by=user, title=f'org of {email}')
            else:
                org = User.objects.get(email='admin@example.com').active_organization
                org.add_user(user)
            user.active_organization = org
            user.save(update_fields=['active_organization'])
            out = {'id': user.id, 'organization': org.id}
        else:
            User.objects.filter(email=sys.argv[2]).update(is_active=False)
    sys.stderr.write(noise.getvalue())
    print(json.dumps(out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
