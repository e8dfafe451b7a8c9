"""Mint a short-lived Label Studio PAT for a user, from the Django side, and print only the token.

Usage (with the venv's python, the same env as the server: LABEL_STUDIO_BASE_DATA_DIR=<data dir>,
PYTHONPATH=<this dir>, DJANGO_SETTINGS_MODULE=test_settings):

    python mint_pat.py LIFETIME_SECONDS [EMAIL]

EMAIL defaults to admin@example.com (the provisioned test superuser). The token is built with a subclass of
`jwt_auth.models.LSAPIToken` whose lifetime is LIFETIME_SECONDS; `.for_user()` also records the
OutstandingToken row, so the PAT can be blacklisted like any other. Nothing but the token goes to stdout.
"""

import contextlib
import io
import os
import sys
from datetime import timedelta


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    seconds = int(sys.argv[1])
    email = sys.argv[2] if len(sys.argv) == 3 else 'admin@example.com'
    if seconds <= 0:
        print('LIFETIME_SECONDS must be > 0', file=sys.stderr)
        return 2
    if not os.environ.get('LABEL_STUDIO_BASE_DATA_DIR'):
        print('LABEL_STUDIO_BASE_DATA_DIR must point at the data dir of the server', file=sys.stderr)
        return 2

    # Label Studio's own modules are imported as top-level packages (core, jwt_auth, users, ...).
    import label_studio

    sys.path.insert(0, os.path.dirname(label_studio.__file__))
    os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'test_settings')

    # Settings import logs to stdout on some paths; keep stdout for the token only.
    with contextlib.redirect_stdout(io.StringIO()) as noise:
        import django

        django.setup()
        from jwt_auth.models import LSAPIToken
        from users.models import User

        class ShortLivedPAT(LSAPIToken):
            lifetime = timedelta(seconds=seconds)

        user = User.objects.get(email=email)
        # str() of an LSAPIToken is the truncated header.payload form; the usable PAT is the full JWT.
        token = ShortLivedPAT.for_user(user).get_full_jwt()
    sys.stdout.write(token + '\n')
    sys.stdout.flush()
    sys.stderr.write(noise.getvalue())
    sys.stderr.flush()
    # The clock of the token is already running: skip interpreter/Django teardown (the OutstandingToken
    # row is committed; SQLite is in autocommit mode) so the caller gets it as early as possible.
    os._exit(0)


if __name__ == '__main__':
    sys.exit(main())
