"""S3ArtifactStore without an S3 endpoint: an unreachable endpoint is a transient error after bounded retries.
(Against a real S3 endpoint: ``tests/integration/test_s3_store.py``.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from asr_optimize.errors import StoreError, TransientError
from asr_optimize.store.local import ArtifactRef
from asr_optimize.store.s3 import S3ArtifactStore, S3UnavailableError
from tests.support.servers import free_port


def test_endpoint_down_is_transient_after_bounded_retries(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    store = S3ArtifactStore("bucket", "p", endpoint_url=url, aws_access_key_id="a", aws_secret_access_key="b",
                            cache_dir=tmp_path, max_attempts=2, connect_timeout=0.5)
    ref = ArtifactRef(model_slug="tiny", revision="sha256:abcdef0123456789", stage="export", key="k1")
    start = time.monotonic()
    with pytest.raises(S3UnavailableError, match=r"unreachable .* after 2 attempts") as info:
        store.get(ref)
    assert time.monotonic() - start < 10
    assert isinstance(info.value, TransientError) and isinstance(info.value, StoreError)
    assert url in str(info.value)
