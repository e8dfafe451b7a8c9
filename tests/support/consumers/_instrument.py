"""Counts every HTTP exchange a stock client makes, without configuring the client.

Import this module before the client library does any I/O. It wraps, process-wide:
  - httpx.HTTPTransport.handle_request  (label-studio-sdk 2.x: every API call and its token refresh POST)
  - requests.Session.send               (the SDKs' `get_local_path` downloads; plain `requests.get` goes through it)
The clients are still built exactly as a user builds them (no custom transport or client is passed in).

For each exchange it records method, scheme://host:port, path (no query), status, and the *scheme* of the
Authorization header that was sent ("Token", "Bearer", or None). Header values are never recorded. It also
collects absolute http(s) URLs found in JSON response bodies and in Location headers, with their host, so a
caller can check that every absolute URL the server builds leads back to the address the client was given.
"""

import json
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

_lock = threading.Lock()
EXCHANGES = []  # dicts: t, lib, method, origin, path, status, auth, error
ABSOLUTE_URLS = []  # dicts: where, url, origin


def _origin(url):
    p = urlsplit(str(url))
    port = p.port or (443 if p.scheme == 'https' else 80)
    return f'{p.scheme}://{p.hostname}:{port}'


def _auth_scheme(value):
    if not value:
        return None
    return value.split(' ', 1)[0]


def _scan_json(obj, where, out, depth=0):
    if depth > 12:
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _scan_json(v, f'{where}.{k}', out, depth + 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:200]):
            _scan_json(v, f'{where}[{i}]', out, depth + 1)
    elif isinstance(obj, str) and (obj.startswith('http://') or obj.startswith('https://')):
        out.append((where, obj))


def _record(lib, method, url, status, auth, headers=None, body=None, content_type='', error=None):
    urls = []
    if headers is not None:
        loc = headers.get('location')
        if loc and (loc.startswith('http://') or loc.startswith('https://')):
            urls.append(('header:Location', loc))
    if body is not None and 'json' in (content_type or ''):
        try:
            _scan_json(json.loads(body), 'body', urls)
        except Exception:
            pass
    p = urlsplit(str(url))
    with _lock:
        EXCHANGES.append(
            {
                't': time.time(),
                'lib': lib,
                'method': method,
                'origin': _origin(url),
                'path': p.path,
                'status': status,
                'auth': _auth_scheme(auth),
                'error': error,
            }
        )
        for where, u in urls:
            ABSOLUTE_URLS.append({'where': f'{method} {p.path} {where}', 'url': u, 'origin': _origin(u)})


def _install_httpx():
    import httpx

    orig = httpx.HTTPTransport.handle_request

    def handle_request(self, request):
        auth = request.headers.get('authorization')
        try:
            response = orig(self, request)
        except Exception as exc:
            _record('httpx', request.method, request.url, None, auth, error=type(exc).__name__)
            raise
        ctype = response.headers.get('content-type', '')
        body = None
        if 'json' in ctype:
            # Read the (small) JSON body so it can be scanned; the response stays readable for the caller.
            response.read()
            body = response.content
        _record('httpx', request.method, request.url, response.status_code, auth, response.headers, body, ctype)
        return response

    httpx.HTTPTransport.handle_request = handle_request


def _install_requests():
    import requests

    orig = requests.Session.send

    def send(self, request, **kwargs):
        auth = request.headers.get('Authorization')
        try:
            response = orig(self, request, **kwargs)
        except Exception as exc:
            _record('requests', request.method, request.url, None, auth, error=type(exc).__name__)
            raise
        ctype = response.headers.get('content-type', '')
        body = response.content if 'json' in ctype else None
        _record('requests', request.method, request.url, response.status_code, auth, response.headers, body, ctype)
        return response

    requests.Session.send = send


def install():
    try:
        _install_httpx()
    except ImportError:
        pass
    _install_requests()


def summary(expected_origin):
    """Counts for the JSON summary; `expected_origin` is scheme://host:port of LABEL_STUDIO_URL."""
    with _lock:
        ex = list(EXCHANGES)
        au = list(ABSOLUTE_URLS)
    by_status = Counter(str(e['status']) for e in ex)
    foreign = [e for e in ex if e['origin'] != expected_origin]
    foreign_urls = [u for u in au if u['origin'] != expected_origin]
    return {
        'requests': len(ex),
        'by_status': dict(sorted(by_status.items())),
        'status_401': sum(1 for e in ex if e['status'] == 401),
        'transport_errors': sum(1 for e in ex if e['error']),
        'auth_schemes_sent': dict(Counter(str(e['auth']) for e in ex)),
        'refresh_posts': sum(
            1 for e in ex if e['method'] == 'POST' and e['path'].rstrip('/') == '/api/token/refresh'
        ),
        'requests_to_other_origins': [
            {k: e[k] for k in ('method', 'origin', 'path', 'status')} for e in foreign[:20]
        ],
        'absolute_urls_seen': len(au),
        'absolute_url_origins': dict(Counter(u['origin'] for u in au)),
        'absolute_urls_to_other_origins': foreign_urls[:20],
        'first_401s': [
            {k: e[k] for k in ('method', 'path', 'auth')} for e in ex if e['status'] == 401
        ][:10],
    }


install()
