"""A stock label-studio-sdk 2.1.2 workload, configured only the way a user configures it.

Environment (nothing else configures the client):
  LABEL_STUDIO_URL       base URL the SDK talks to (the proxy)
  LABEL_STUDIO_API_KEY   the key; a placeholder: `placeholder-not-a-token` is sent as `Authorization: Token …`;
                         an unsigned JWT with token_type "refresh" and a future exp (placeholder_jwt.py) makes the
                         SDK POST it to `api/token/refresh/` and send `Bearer <access>` afterwards.

Run with the SDK venv's python (tests/support/consumers/provision.sh: $LSTR_SDK_PYTHON):
  LABEL_STUDIO_URL=http://127.0.0.1:PORT LABEL_STUDIO_API_KEY=placeholder-not-a-token \
    "$LSTR_SDK_PYTHON" tests/support/consumers/sdk_flow.py --duration 60

Each iteration: import tasks (JSON), upload a fresh PNG to the project (multipart import: one task per file),
read the task back, download the image with the SDK's `get_local_path` (bytes must be equal), list all tasks of
the project with pagination (count must match). It loops until --duration seconds have passed (at least one
iteration), so a duration longer than 3 access-token lifetimes spans at least 3 of them.

Prints one JSON summary on stdout; exits 1 on any failure, on any 401 seen on the wire, on any request to
another origin than LABEL_STUDIO_URL's, on any absolute URL in a response that points elsewhere, or when fewer
than --min-refreshes token-refresh POSTs were made. Header values are never printed.
"""

import _instrument  # noqa: I001  (must wrap httpx/requests before the SDK is imported)

import argparse
import hashlib
import io
import json
import os
import random
import sys
import tempfile
import time
import traceback
from urllib.parse import urlsplit

from label_studio_sdk.client import LabelStudio
from label_studio_sdk._extensions.label_studio_tools.core.utils.io import get_local_path

LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="choice" toName="image"><Choice value="a"/><Choice value="b"/></Choices></View>'
)


def make_png(seed):
    from PIL import Image

    rnd = random.Random(seed)
    w, h = 16 + rnd.randrange(48), 16 + rnd.randrange(48)
    img = Image.frombytes('RGB', (w, h), bytes(rnd.randrange(256) for _ in range(w * h * 3)))
    buf = io.BytesIO()
    img.save(buf, format='PNG')
    return buf.getvalue()


def origin_of(url):
    p = urlsplit(url)
    return f'{p.scheme}://{p.hostname}:{p.port or (443 if p.scheme == "https" else 80)}'


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--duration', type=float, default=0, help='seconds to keep iterating (default: one iteration)')
    ap.add_argument('--pause', type=float, default=0.5, help='seconds between iterations')
    ap.add_argument('--tasks-per-iteration', type=int, default=3)
    ap.add_argument('--page-size', type=int, default=2, help='small, so listing needs several pages')
    ap.add_argument('--min-refreshes', type=int, default=0, help='fail unless at least this many refresh POSTs')
    ap.add_argument('--max-iterations', type=int, default=10_000)
    args = ap.parse_args()

    base_url = os.environ.get('LABEL_STUDIO_URL', '')
    if not base_url or 'LABEL_STUDIO_API_KEY' not in os.environ:
        print(json.dumps({'ok': False, 'failures': ['LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set']}))
        return 2
    expected_origin = origin_of(base_url)
    started = time.time()
    failures = []
    stats = {'iterations': 0, 'tasks_imported': 0, 'files_uploaded': 0, 'downloads_verified': 0,
             'bytes_verified': 0, 'list_calls': 0, 'pages_listed': 0}
    key_mode = None
    project_id = None
    expected_tasks = 0

    try:
        # Exactly what a user writes: api_key defaults to os.getenv("LABEL_STUDIO_API_KEY") (base_client.py:105).
        ls = LabelStudio(base_url=base_url)
        key_mode = 'legacy-scheme (Token)' if ls._client_wrapper._tokens_client._use_legacy_token else 'jwt (refresh+Bearer)'
        project = ls.projects.create(title=f'sdk-flow {int(started)}', label_config=LABEL_CONFIG)
        project_id = project.id
        # The SDK 2.1.2 has no typed multipart upload (projects.import_tasks is JSON only): use its own HTTP
        # client, which adds the same auth headers and refreshes the same way as every typed call.
        http = ls._client_wrapper.httpx_client
        it = 0
        while True:
            it += 1
            # 1. JSON task import
            tasks = [{'image': f'/static/samples/none-{it}-{i}.png'} for i in range(args.tasks_per_iteration)]
            ls.projects.import_tasks(id=project_id, request=tasks)
            stats['tasks_imported'] += len(tasks)
            expected_tasks += len(tasks)
            # 2. file upload (one task per uploaded file)
            png = make_png(f'{started}-{it}')
            r = http.request(
                f'api/projects/{project_id}/import',
                method='POST',
                params={'return_task_ids': 'true'},
                files={'file': (f'img-{it}.png', png, 'image/png')},
            )
            if r.status_code != 201:
                raise RuntimeError(f'upload: HTTP {r.status_code}')
            body = r.json()
            task_id = body['task_ids'][0]
            stats['files_uploaded'] += 1
            expected_tasks += 1
            # 3. read the task back; its data holds the uploaded file's URL
            task = ls.tasks.get(id=task_id)
            url = task.data['image']
            # 4. download with the SDK's own helper: hostname/access_token from the environment
            with tempfile.TemporaryDirectory() as cache:
                path = get_local_path(url, cache_dir=cache, download_resources=True, task_id=task_id)
                with open(path, 'rb') as f:
                    got = f.read()
            if hashlib.sha256(got).digest() != hashlib.sha256(png).digest():
                raise RuntimeError(f'downloaded bytes differ for {url}: {len(got)} vs {len(png)} bytes')
            stats['downloads_verified'] += 1
            stats['bytes_verified'] += len(got)
            # 5. list all tasks, page by page
            # (the SDK asks for page+1 until Label Studio answers 404, which its pager treats as the end:
            # _extensions/pager_ext.py:22-30)
            before = len(_instrument.EXCHANGES)
            seen = sum(1 for _ in ls.tasks.list(project=project_id, page_size=args.page_size))
            stats['list_calls'] += 1
            stats['pages_listed'] += sum(
                1 for e in _instrument.EXCHANGES[before:] if e['path'] == '/api/tasks/' and e['status'] == 200
            )
            if seen != expected_tasks:
                raise RuntimeError(f'listed {seen} tasks, expected {expected_tasks}')
            stats['iterations'] = it
            if time.time() - started >= args.duration or it >= args.max_iterations:
                break
            time.sleep(args.pause)
    except Exception as exc:  # noqa: BLE001 — every failure goes into the summary
        if hasattr(exc, 'status_code') and hasattr(exc, 'body'):  # the SDK's ApiError: status and body only
            failures.append(f'{type(exc).__name__}: HTTP {exc.status_code}: {str(exc.body)[:300]}')
        else:
            failures.append(f'{type(exc).__name__}: {str(exc)[:300]}')
        tb = traceback.format_exc().strip().splitlines()
        failures.append('at: ' + ' | '.join(l.strip() for l in tb[-4:-1]))

    wire = _instrument.summary(expected_origin)
    if wire['status_401']:
        failures.append(f"{wire['status_401']} responses with status 401")
    if wire['requests_to_other_origins']:
        failures.append('requests went to another origin than LABEL_STUDIO_URL')
    if wire['absolute_urls_to_other_origins']:
        failures.append('responses contained absolute URLs to another origin')
    if wire['refresh_posts'] < args.min_refreshes:
        failures.append(f"{wire['refresh_posts']} refresh POSTs < --min-refreshes {args.min_refreshes}")
    if stats['iterations'] == 0 and not failures:
        failures.append('no iteration completed')
    summary = {
        'ok': not failures,
        'client': 'label-studio-sdk 2.1.2',
        'label_studio_url': base_url,
        'key_mode': key_mode,
        'project_id': project_id,
        'elapsed_s': round(time.time() - started, 1),
        **stats,
        'wire': wire,
        'failures': failures,
    }
    print(json.dumps(summary, indent=1))
    return 0 if not failures else 1


if __name__ == '__main__':
    sys.exit(main())
