"""Print an unsigned JWT (alg "none") that stands in for a Label Studio token and is useless as a credential.

    python3 placeholder_jwt.py [--type refresh|access] [--exp EPOCH_SECONDS | --ttl SECONDS]

Default: token_type "refresh", exp 100 years from now. label-studio-sdk 2.1.2 treats any JWT with a future `exp` as
a refresh token (tokens/client_ext.py:21,37-57) and POSTs it to `api/token/refresh/`; a proxy answers that
locally. `--type access --exp E` makes the stand-in access token such an answer carries (the SDK caches it until
E: it needs `exp`, and never looks at `token_type` of the access token). Standard library only.
"""

import argparse
import base64
import json
import time
import uuid


def b64(obj):
    raw = json.dumps(obj, separators=(',', ':')).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b'=').decode()


def make(token_type='refresh', exp=None):
    now = int(time.time())
    payload = {
        'token_type': token_type,
        'exp': int(exp if exp is not None else now + 100 * 365 * 86400),
        'iat': now,
        'jti': uuid.uuid4().hex,
        'user_id': '0',
        'placeholder': True,
    }
    return b64({'alg': 'none', 'typ': 'JWT'}) + '.' + b64(payload) + '.'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--type', default='refresh', choices=['refresh', 'access'])
    g = ap.add_mutually_exclusive_group()
    g.add_argument('--exp', type=int)
    g.add_argument('--ttl', type=int)
    a = ap.parse_args()
    exp = a.exp if a.exp is not None else (int(time.time()) + a.ttl if a.ttl is not None else None)
    print(make(a.type, exp))


if __name__ == '__main__':
    main()
