"""A tiny model for the stock ML backend server label-studio-ml 1.0.9 that proves it could download the task's image.

predict() downloads each task's `data.image` through the backend's own helper and returns, as a TextArea
prediction, `sha256=<hex> size=<bytes> wh=<w>x<h> helper=<name>` (or `ERROR helper=<name> <what failed>`).
The label config must be: <Image name="image" value="$image"/> <TextArea name="caption" toName="image"/>.

Which helper (LSTR_ML_HELPER, a test knob, not something a user sets; default `tools`):
  tools  label_studio_tools.core.utils.io.get_local_path(url)  — host and key from LABEL_STUDIO_URL /
         LABEL_STUDIO_API_KEY (label_studio_tools 0.0.4 io.py:65-74); sends `Authorization: Token <key>` when the
         file's host is that host (io.py:180-181). This is what the proof uses.
  base   self.get_local_path(url) — LabelStudioMLBase's method (label_studio_ml/model.py:322-323), which passes
         the hostname and access_token that Label Studio sent in /setup: those win over the environment.
  utils  label_studio_ml.utils.get_image_local_path(url) — host from LABEL_STUDIO_HOSTNAME / HEARTEX_HOSTNAME /
         HOSTNAME (utils.py:45-46, params.get_env), key from the environment.
Every call uses a fresh cache dir where the helper takes one, so each prediction really downloads.
"""

import hashlib
import os
import tempfile

from label_studio_ml.model import LabelStudioMLBase


class DownloadProbe(LabelStudioMLBase):
    def _download(self, url, cache_dir):
        helper = os.environ.get('LSTR_ML_HELPER', 'tools')
        if helper == 'tools':
            from label_studio_tools.core.utils.io import get_local_path

            return get_local_path(url, cache_dir=cache_dir)
        if helper == 'base':
            # No cache_dir parameter on the base method: it caches under ~/.cache/label-studio by URL.
            return self.get_local_path(url)
        if helper == 'utils':
            from label_studio_ml.utils import get_image_local_path

            return get_image_local_path(url, image_cache_dir=cache_dir)
        raise ValueError(f'unknown LSTR_ML_HELPER {helper!r}')

    def predict(self, tasks, **kwargs):
        from PIL import Image

        helper = os.environ.get('LSTR_ML_HELPER', 'tools')
        results = []
        for task in tasks:
            url = task['data'].get('image', '')
            try:
                with tempfile.TemporaryDirectory() as cache:
                    path = self._download(url, cache)
                    with open(path, 'rb') as f:
                        data = f.read()
                    with Image.open(path) as im:
                        w, h = im.size
                text = f'sha256={hashlib.sha256(data).hexdigest()} size={len(data)} wh={w}x{h} helper={helper}'
            except Exception as exc:  # noqa: BLE001 — the failure itself is the evidence
                text = f'ERROR helper={helper} {type(exc).__name__}: {str(exc)[:200]}'
            results.append(
                {
                    'result': [
                        {
                            'from_name': 'caption',
                            'to_name': 'image',
                            'type': 'textarea',
                            'value': {'text': [text]},
                        }
                    ],
                    'score': 1.0,
                    'model_version': 'download-probe',
                }
            )
        return results
