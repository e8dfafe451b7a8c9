"""Django settings for a test Label Studio 1.23.2: stock settings plus a configurable access-token lifetime.

Use: put this directory on PYTHONPATH and set DJANGO_SETTINGS_MODULE=test_settings (the `label-studio`
launcher only does `os.environ.setdefault`, so it honours it).

Env:
  LSTR_TEST_ACCESS_TTL_SECONDS   access-token lifetime in seconds (default 300, the stock value)

The import order matters: `core.settings.base` first, then `label_studio.core.settings.label_studio`,
otherwise start-up crashes.
"""

import os
from datetime import timedelta

from core.settings.base import *  # noqa: F401,F403
from label_studio.core.settings.label_studio import *  # noqa: F401,F403

_ttl = int(os.environ.get('LSTR_TEST_ACCESS_TTL_SECONDS', '300'))
if _ttl <= 0:
    raise ValueError(f'LSTR_TEST_ACCESS_TTL_SECONDS must be > 0, got {_ttl}')

# Keep any keys an existing SIMPLE_JWT dict sets; only override the access-token lifetime.
SIMPLE_JWT = dict(globals().get('SIMPLE_JWT') or {})
SIMPLE_JWT['ACCESS_TOKEN_LIFETIME'] = timedelta(seconds=_ttl)
