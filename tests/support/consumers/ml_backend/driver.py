"""Drives Label Studio to ask the stock ML backend (ml_backend/launch.sh) for predictions, and checks them.

Environment:
  LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY   how this driver (an admin client, label-studio-sdk 2.1.2) reaches
                                           Label Studio: the proxy and a placeholder key
  ML_BACKEND_URL                           the URL Label Studio itself uses to reach the backend
                                           (http://127.0.0.1:PORT; Label Studio needs ML_BLOCK_LOCAL_IP=false
                                           to accept a loopback backend)

Run with the SDK venv's python:
  LABEL_STUDIO_URL=… LABEL_STUDIO_API_KEY=placeholder-not-a-token ML_BACKEND_URL=http://127.0.0.1:9091 \
    "$LSTR_SDK_PYTHON" tests/support/consumers/ml_backend/driver.py [--duration S]

Steps: create a project (Image + TextArea), register the backend with `POST /api/ml` (Label Studio calls the
backend's /health and /setup synchronously while validating: ml/serializers.py:82-89), then per iteration upload
a fresh PNG (multipart import → a task with data.image=/data/upload/…), make Label Studio request predictions
for that task (`POST /api/dm/actions?id=retrieve_tasks_predictions` → MLBackend.predict_tasks → backend /predict)
and read them back (`GET /api/predictions?task=`), then ask again through `POST /api/ml/{id}/interactive-annotating`.
Both answers must carry the sha256 of the uploaded bytes, i.e. the backend downloaded the image.
Prints a JSON summary; exits 1 on any failure or any 401 on this driver's own requests.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import _instrument  # noqa: E402,I001

import argparse  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from label_studio_sdk.client import LabelStudio  # noqa: E402

LABEL_CONFIG = '<View><Image name="image" value="$image"/><TextArea name="caption" toName="image"/></View>'


def make_png(seed):
    from PIL import Image

    rnd = random.Random(seed)
    w, h = 8 + rnd.randrange(40), 8 + rnd.randrange(40)
    buf = io.BytesIO()
    Image.frombytes('RGB', (w, h), bytes(rnd.randrange(256) for _ in range(w * h * 3))).save(buf, format='PNG')
    return buf.getvalue(), (w, h)


def origin_of(url):
    p = urlsplit(url)
    return f'{p.scheme}://{p.hostname}:{p.port or (443 if p.scheme == "https" else 80)}'


def texts_of(result):
    out = []
    for r in result or []:
        out += (r.get('value') or {}).get('text') or []
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--duration', type=float, default=0, help='seconds to keep iterating (default: one iteration)')
    ap.add_argument('--pause', type=float, default=0.5)
    ap.add_argument('--skip-interactive', action='store_true')
    args = ap.parse_args()

    base_url = os.environ.get('LABEL_STUDIO_URL', '')
    backend_url = os.environ.get('ML_BACKEND_URL', '')
    if not base_url or not backend_url or 'LABEL_STUDIO_API_KEY' not in os.environ:
        print(json.dumps({'ok': False, 'failures': ['LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, ML_BACKEND_URL must be set']}))
        return 2
    started = time.time()
    failures = []
    checks = []
    stats = {'iterations': 0, 'predictions_verified': 0, 'interactive_verified': 0}
    ml = None
    try:
        ls = LabelStudio(base_url=base_url)
        http = ls._client_wrapper.httpx_client
        project = ls.projects.create(title=f'ml-backend {int(started)}', label_config=LABEL_CONFIG)
        ml = ls.ml.create(project=project.id, url=backend_url, title='download-probe', is_interactive=True)
        if str(ml.state) not in ('CO', 'MLBackendState.CONNECTED') and 'CO' not in str(ml.state):
            raise RuntimeError(f'ML backend registered in state {ml.state}: {ml.error_message}')
        it = 0
        while True:
            it += 1
            png, (w, h) = make_png(f'{started}-{it}')
            want = f'sha256={hashlib.sha256(png).hexdigest()} size={len(png)} wh={w}x{h}'
            r = http.request(
                f'api/projects/{project.id}/import',
                method='POST',
                params={'return_task_ids': 'true'},
                files={'file': (f'ml-{it}.png', png, 'image/png')},
            )
            if r.status_code != 201:
                raise RuntimeError(f'upload: HTTP {r.status_code}')
            task_id = r.json()['task_ids'][0]
            # Label Studio asks the backend (synchronously) for predictions of the selected task.
            r = http.request(
                'api/dm/actions',
                method='POST',
                params={'id': 'retrieve_tasks_predictions', 'project': project.id},
                json={'selectedItems': {'all': False, 'included': [task_id]}},
            )
            if r.status_code != 200:
                raise RuntimeError(f'retrieve_tasks_predictions: HTTP {r.status_code}')
            preds = ls.predictions.list(task=task_id)
            got = [t for p in preds for t in texts_of(p.result)]
            checks.append({'task': task_id, 'via': 'retrieve_tasks_predictions', 'prediction': got[:2]})
            if not any(t.startswith(want) for t in got):
                raise RuntimeError(f'prediction for task {task_id} does not prove the download: {got[:2]} (want {want})')
            stats['predictions_verified'] += 1
            if not args.skip_interactive:
                r = http.request(f'api/ml/{ml.id}/interactive-annotating', method='POST', json={'task': task_id})
                body = r.json() if r.status_code == 200 else {}
                got = texts_of((body.get('data') or {}).get('result'))
                checks.append({'task': task_id, 'via': 'interactive-annotating', 'prediction': got[:2],
                               'errors': body.get('errors')})
                if r.status_code != 200 or not any(t.startswith(want) for t in got):
                    raise RuntimeError(f'interactive-annotating for task {task_id}: HTTP {r.status_code} {str(body)[:200]}')
                stats['interactive_verified'] += 1
            stats['iterations'] = it
            if time.time() - started >= args.duration:
                break
            time.sleep(args.pause)
    except Exception as exc:  # noqa: BLE001
        if hasattr(exc, 'status_code') and hasattr(exc, 'body'):
            failures.append(f'{type(exc).__name__}: HTTP {exc.status_code}: {str(exc.body)[:300]}')
        else:
            failures.append(f'{type(exc).__name__}: {str(exc)[:400]}')
        tb = traceback.format_exc().strip().splitlines()
        failures.append('at: ' + ' | '.join(l.strip() for l in tb[-4:-1]))

    wire = _instrument.summary(origin_of(base_url))
    # POST /api/ml answers 201 with `Location: <the backend's url>` (DRF puts a serializer's `url` field there):
    # that absolute URL is the backend's, not Label Studio's; not a leak past the proxy.
    wire['absolute_urls_to_other_origins'] = [
        u for u in wire['absolute_urls_to_other_origins'] if u['origin'] != origin_of(backend_url)
    ]
    if wire['status_401']:
        failures.append(f"{wire['status_401']} responses with status 401 on the driver's own requests")
    if wire['requests_to_other_origins']:
        failures.append('driver requests went to another origin than LABEL_STUDIO_URL')
    if wire['absolute_urls_to_other_origins']:
        failures.append('responses contained absolute URLs to another origin')
    summary = {
        'ok': not failures,
        'backend': 'label-studio-ml 1.0.9',
        'label_studio_url': base_url,
        'ml_backend_url': backend_url,
        'ml_backend_state': str(getattr(ml, 'state', None)),
        'elapsed_s': round(time.time() - started, 1),
        **stats,
        'checks': checks[-6:],
        'wire': wire,
        'failures': failures,
    }
    print(json.dumps(summary, indent=1))
    return 0 if not failures else 1


if __name__ == '__main__':
    sys.exit(main())
