"""Which absolute URLs does Label Studio 1.23.2 hand out, and do they lead back through the proxy?

Environment: LABEL_STUDIO_URL (the proxy), LABEL_STUDIO_API_KEY (a placeholder; the proxy supplies the credential).
Optional: PROBE_LOCAL_FILES_DIR = a directory under Label Studio's LOCAL_FILES_DOCUMENT_ROOT, to also create a
Local Files storage (only meaningful when Label Studio was started with LOCAL_FILES_SERVING_ENABLED=true).

Run with the SDK venv's python. Prints a JSON report on stdout: every absolute URL seen (body or Location), its
origin and whether it is the proxy's origin; for each such origin, whether the SDK's `get_local_path` attaches
the Authorization header to a file URL on it and what status it gets; whether following a `next` link works.
Exit status 0 unless the probe itself could not run (the report is evidence, not a test).
"""

import _instrument  # noqa: I001

import io
import json
import os
import sys
import tempfile
import time
from urllib.parse import urlsplit

import httpx
from PIL import Image

from label_studio_sdk._extensions.label_studio_tools.core.utils.io import get_local_path

BASE = os.environ['LABEL_STUDIO_URL'].rstrip('/')
KEY = os.environ['LABEL_STUDIO_API_KEY']
CFG = '<View><Image name="image" value="$image"/><Choices name="c" toName="image"><Choice value="a"/></Choices></View>'


def origin(url):
    p = urlsplit(url)
    return f'{p.scheme}://{p.hostname}:{p.port or (443 if p.scheme == "https" else 80)}'


PROXY_ORIGIN = origin(BASE)
client = httpx.Client(base_url=BASE, headers={'Authorization': f'Token {KEY}'}, follow_redirects=False, timeout=60)
report = {'label_studio_url': BASE, 'steps': [], 'get_local_path': [], 'follow_next': None}


def step(what, r):
    urls = []
    loc = r.headers.get('location')
    if loc:
        urls.append(('Location', loc))
    if 'json' in r.headers.get('content-type', ''):
        found = []
        _instrument._scan_json(r.json(), 'body', found)
        urls += found
    entry = {
        'what': what,
        'request': f'{r.request.method} {r.request.url.raw_path.decode()}',
        'status': r.status_code,
        'location': loc,
        'absolute_urls': [
            {'where': w, 'url': u, 'origin': origin(u), 'is_proxy_origin': origin(u) == PROXY_ORIGIN}
            for w, u in urls
            if u.startswith('http://') or u.startswith('https://')
        ],
    }
    report['steps'].append(entry)
    return r


def png():
    b = io.BytesIO()
    Image.frombytes('RGB', (4, 4), os.urandom(48)).save(b, format='PNG')
    return b.getvalue()


def main():
    ids = []
    for i in range(3):
        r = step(f'create project {i}', client.post('/api/projects/', json={'title': f'url-probe {i}', 'label_config': CFG}))
        ids.append(r.json()['id'])
    pid = ids[0]
    r1 = step('projects page 1 (pagination next)', client.get('/api/projects/', params={'page_size': 1, 'page': 1}))
    step('projects page 2 (next+previous)', client.get('/api/projects/', params={'page_size': 1, 'page': 2}))
    step('no trailing slash (APPEND_SLASH redirect)', client.get('/api/projects'))
    step('root page redirect', client.get('/'))
    step('memberships (paginated)', client.get('/api/organizations/1/memberships', params={'page_size': 1}))
    data = png()
    r = step(
        'upload a file (multipart import)',
        client.post(f'/api/projects/{pid}/import', params={'return_task_ids': 'true'}, files={'file': ('p.png', data, 'image/png')}),
    )
    task_id = r.json()['task_ids'][0]
    r = step('task with uploaded file', client.get(f'/api/tasks/{task_id}'))
    file_url = r.json()['data']['image']
    step('task with resolve_uri=true', client.get(f'/api/tasks/{task_id}', params={'resolve_uri': 'true'}))
    step('file-uploads list', client.get(f'/api/projects/{pid}/file-uploads'))
    step('export (direct JSON)', client.get(f'/api/projects/{pid}/export', params={'exportType': 'JSON'}))
    r = step('export snapshot create', client.post(f'/api/projects/{pid}/exports/', json={}))
    if r.status_code in (200, 201):
        eid = r.json().get('id')
        for _ in range(20):
            rr = client.get(f'/api/projects/{pid}/exports/{eid}')
            if rr.json().get('status') == 'completed':
                break
            time.sleep(0.3)
        step('export snapshot detail', rr)
        step('export snapshot download', client.get(f'/api/projects/{pid}/exports/{eid}/download', params={'exportType': 'JSON'}))
    step('ML backends list', client.get('/api/ml/', params={'project': pid}))

    local_dir = os.environ.get('PROBE_LOCAL_FILES_DIR')
    if local_dir:
        os.makedirs(local_dir, exist_ok=True)
        with open(os.path.join(local_dir, 'local.png'), 'wb') as f:
            f.write(png())
        r = step('create Local Files storage', client.post('/api/storages/localfiles', json={
            'project': ids[1], 'path': local_dir, 'use_blob_urls': True, 'regex_filter': '.*png'}))
        if r.status_code == 201:
            sid = r.json()['id']
            step('sync Local Files storage', client.post(f'/api/storages/localfiles/{sid}/sync'))
            r = step('task from Local Files storage', client.get('/api/tasks/', params={'project': ids[1], 'fields': 'all'}))
            tasks = r.json().get('tasks') or []
            if tasks:
                lf_url = tasks[0]['data']['image']
                report['local_files_task_url'] = lf_url
                dl(lf_url, 'Local Files task URL as Label Studio returned it')

    # get_local_path on the uploaded file, as returned (relative), and re-rooted on every origin seen.
    dl(file_url, 'uploaded file URL as Label Studio returned it')
    origins = sorted({u['origin'] for s in report['steps'] for u in s['absolute_urls']})
    for o in origins:
        dl(o + file_url, f'uploaded file URL on origin {o} (seen in responses)')

    # Follow the pagination `next` link the way a generic client would (same headers).
    nxt = r1.json().get('next')
    if nxt:
        r = httpx.get(nxt, headers={'Authorization': f'Token {KEY}'}, timeout=30)
        report['follow_next'] = {'url': nxt, 'origin': origin(nxt), 'status': r.status_code}

    seen = [u for s in report['steps'] for u in s['absolute_urls']]
    report['summary'] = {
        'absolute_urls': len(seen),
        'origins': sorted({u['origin'] for u in seen}),
        'all_lead_back_through_proxy': all(u['is_proxy_origin'] for u in seen),
    }
    print(json.dumps(report, indent=1))
    return 0


def dl(url, what):
    before = len(_instrument.EXCHANGES)
    entry = {'what': what, 'url': url}
    try:
        with tempfile.TemporaryDirectory() as cache:
            path = get_local_path(url, cache_dir=cache, download_resources=True)
            entry['result'] = f'ok, {os.path.getsize(path)} bytes'
    except Exception as exc:  # noqa: BLE001
        entry['result'] = f'{type(exc).__name__}: {str(exc)[:160]}'
    entry['requests'] = [
        {'origin': e['origin'], 'path': e['path'], 'auth_sent': e['auth'], 'status': e['status']}
        for e in _instrument.EXCHANGES[before:]
    ]
    report['get_local_path'].append(entry)


if __name__ == '__main__':
    sys.exit(main())
