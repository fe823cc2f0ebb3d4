"""The IndicWav2Vec Hindi character vocabulary, shared by the demo tools."""

from __future__ import annotations

import json

from asr_optimize.paths import REPLICA_CONFIG

#: token -> id, read from the packaged ``indicwav2vec-hindi`` vocab.json (asr_optimize/assets/replica-config);
#: ``<pad>`` (1) is the CTC blank, ``|`` the word delimiter. Nukta letters are two code points, as NFC leaves them.
HINDI_VOCAB: dict[str, int] = json.loads((REPLICA_CONFIG / "vocab.json").read_text(encoding="utf-8"))

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
WORD_DELIMITER = "|"

#: Characters a transcript may contain: the single-character tokens except the delimiter, plus the space.
ALLOWED_CHARS: frozenset[str] = frozenset([t for t in HINDI_VOCAB if len(t) == 1 and t != WORD_DELIMITER] + [" "])
