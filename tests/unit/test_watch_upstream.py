"""watch-upstream's decision without servers: a revision already in production is remembered, not announced."""

from __future__ import annotations

from pathlib import Path

MODEL = "ai4bharat/indicwav2vec-hindi"
SHA_1, SHA_2 = "1" * 40, "2" * 40


def test_a_revision_already_built_is_not_announced(tmp_path: Path) -> None:
    from asr_optimize.store.local import LocalArtifactStore, production_pointer
    from flows.watch_upstream import check_upstream, upstream_pointer

    store = LocalArtifactStore(tmp_path / "store")
    store.write_pointer(production_pointer("ai4bharat--indicwav2vec-hindi"), {"model": MODEL, "revision": SHA_1})
    emitted: list[tuple[str, str, str | None]] = []

    def emit(model: str, sha: str, previous: str | None) -> str:
        emitted.append((model, sha, previous))
        return "event-id"

    [check] = check_upstream([MODEL], store, revision_of=lambda _: SHA_1, emit=emit)
    assert check.action == "unchanged" and emitted == []
    assert store.read_pointer(upstream_pointer(MODEL))["revision"] == SHA_1  # remembered quietly
    [check] = check_upstream([MODEL], store, revision_of=lambda _: SHA_2, emit=emit)
    assert check.action == "emitted" and emitted == [(MODEL, SHA_2, SHA_1)]
