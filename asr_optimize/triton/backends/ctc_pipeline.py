"""Triton python-backend model ``asr``: 16 kHz audio in, text out; a fused engine runs in this model (one hop),
other artifacts are called by BLS.

Per utterance: normalize (as the wav2vec2 feature extractor does, over the valid samples), pad to the smallest
length bucket that holds it (config parameter ``bucket_samples``; padding is masked through ``attention_mask``),
then all utterances of one ``execute`` call that share a bucket and acoustic version go to the acoustic model as one
request (at most ``acoustic_max_batch_size`` rows), so Triton's dynamic batcher can merge them with other
instances' requests of the same shape. Buckets run concurrently (``async_exec``). Only each utterance's valid
frames are decoded (CTC greedy with ``ctc.json``). Utterances longer than the largest bucket are cut into
windows by ``chunking.py`` (copied beside this file; numpy only) with the deployment's ``ChunkingOptions`` (silence
splitting, context around speech runs, normalization statistics from ``chunking.window_stats``), run as one batch,
stitched, decoded: as in-process.
Silent utterances (peak below -80 dBFS) give empty text without running the model, as in-process transcription.
Parameter ``pad_batches: false`` (a model whose output zero padding changes, e.g. a group-norm wav2vec2-base; no
buckets then): nothing is padded, each utterance and each long-form window goes at its exact length, equal lengths
in one request, as in-process ``transcribe`` runs such models.

One hop (parameter ``one_hop: true``, the default, and the serving version is a fused engine): this model loads
the serving version's engine itself (``asr_optimize.runners.fused_serving``, from the acoustic model's version
folder, on the device ``one_hop_device`` names) and runs it in process: each utterance is written once into the
engine's pinned staging buffer, the bucket's CUDA graph runs, the CTC argmax runs on the device and only token ids
come back to the host. No BLS round trip, no logits through the host. Each long-form window goes to the smallest
length bucket that holds it, so windows of concurrent recordings share engine calls. Requests naming another
acoustic version (the hot swap's canary) go to the acoustic model by BLS.

The acoustic version comes from the config parameter ``acoustic_version``; a request parameter
``acoustic_version`` overrides it (the canary uses that). Inputs: ``audio`` FP32 [batch, samples] or
``audio_pcm16`` INT16 [batch, samples] (16-bit PCM, half the bytes; scaled by 1/32768), exactly one of them;
optional ``audio_length`` INT64 [batch, 1] for right-padded batches. Output: ``text`` BYTES [batch, 1], UTF-8.
Same arithmetic as ``asr_optimize.transcribe`` (recording-level normalization, frame geometry, greedy decoding).
"""

import asyncio
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

MIN_SAMPLES = 400
SILENCE_PEAK = 1e-4
SPECIAL_TOKENS = {"<s>", "</s>", "<unk>", "<pad>"}
PCM16_SCALE = 1.0 / 32768.0


def _load_chunking(path):
    if not path.is_file():
        return None
    name = "asr_pipeline_chunking"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.acoustic = params["acoustic_model"]
        self.version = int(params["acoustic_version"])
        self.with_mask = params.get("acoustic_has_mask", "true") == "true"
        self.max_rows = max(1, int(params.get("acoustic_max_batch_size") or 8))
        self.buckets = sorted(int(b) for b in params.get("bucket_samples", "").split(",") if b.strip())
        self.pad_batches = params.get("pad_batches", "true") == "true"
        self.long_form = json.loads(params.get("long_form", "{}").replace("'", '"') or "{}")
        self.sample_rate = int(params.get("sample_rate") or 16000)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        ctc = json.loads((version_dir / "ctc.json").read_text("utf-8"))
        self.tokens = ctc["tokens"]
        self.blank_id = int(ctc["blank_id"])
        self.delimiter = ctc.get("word_delimiter", "|")
        self.kernels = ctc["conv_kernel"]
        self.strides = ctc["conv_stride"]
        self.normalize = bool(ctc.get("do_normalize", True))
        self.frame_samples = int(np.prod(self.strides))
        receptive, jump = 1, 1
        for kernel, stride in zip(self.kernels, self.strides, strict=True):
            receptive += (kernel - 1) * jump
            jump *= stride
        self.receptive = receptive
        self.chunking = _load_chunking(version_dir / "chunking.py")
        self.delimiter_id = self.tokens.index(self.delimiter) if self.delimiter in self.tokens else self.blank_id
        self.serving = None
        if params.get("one_hop", "false") == "true":
            self.serving = self._load_engine(params, Path(args["model_repository"]).parent / self.acoustic)

    def _load_engine(self, params, acoustic_dir):
        """The serving version's fused engine, run in this process (one hop); None when that version is not a
        fused engine (ONNX, TensorRT plan: those are served by BLS)."""
        version_dir = acoustic_dir / str(self.version)
        if not (version_dir / "engine" / "engine.json").is_file():
            return None
        try:
            from asr_optimize.runners.fused_serving import FusedServing, ServingError
        except Exception as exc:
            raise pb_utils.TritonModelException(
                f"one_hop: serving {version_dir} in this model needs the asr_optimize package (and torch) in the "
                f"python stub's environment: {type(exc).__name__}: {exc}"
            ) from exc
        device = params.get("one_hop_device", "cpu")
        on_gpu = device.startswith("cuda")
        try:
            return FusedServing(version_dir, params, self.max_rows, on_gpu,
                                int(device.partition(":")[2] or 0) if on_gpu else 0, pb_utils.Logger.log_info)
        except ServingError as exc:
            raise pb_utils.TritonModelException(f"one_hop: {exc}") from exc

    # ------------------------------------------------------------------ arithmetic

    def _frames(self, length):
        out = int(length)
        for kernel, stride in zip(self.kernels, self.strides, strict=True):
            out = (out - kernel) // stride + 1
        return max(out, 0)

    def _decode(self, path):
        """Text of a CTC greedy path (token id per frame): collapse repeats, drop blanks and special tokens."""
        if path.size:
            path = path[np.concatenate(([True], path[1:] != path[:-1]))]
        pieces = [self.tokens[i] for i in path if i != self.blank_id]
        text = "".join(" " if t == self.delimiter else t for t in pieces if t not in SPECIAL_TOKENS)
        return " ".join(text.split())

    def _target(self, n):
        """Padded length for an utterance of n samples; None when it needs the long-form path."""
        for bucket in self.buckets:
            if n <= bucket:
                return bucket
        chunk = float(self.long_form.get("chunk_s", 20.0)) * self.sample_rate
        if not self.long_form.get("enabled", True) or n <= (self.buckets[-1] if self.buckets else chunk):
            return n  # no buckets (or chunking off): its own length
        return None

    # ------------------------------------------------------------------ requests

    def _audio(self, request):
        """The request's audio as float32 [batch, samples]: ``audio`` as sent, or ``audio_pcm16`` scaled."""
        audio = pb_utils.get_input_tensor_by_name(request, "audio")
        pcm16 = pb_utils.get_input_tensor_by_name(request, "audio_pcm16")
        if (audio is None) == (pcm16 is None):
            raise ValueError("send exactly one of audio (FP32) and audio_pcm16 (INT16)")
        if audio is not None:
            return audio.as_numpy().astype(np.float32, copy=False)
        return pcm16.as_numpy().astype(np.float32) * np.float32(PCM16_SCALE)

    def _parse(self, request):
        audio = self._audio(request)
        if audio.ndim != 2:
            raise ValueError(f"audio must be [batch, samples], got shape {audio.shape}")
        length_tensor = pb_utils.get_input_tensor_by_name(request, "audio_length")
        lengths = (
            np.full(audio.shape[0], audio.shape[1], dtype=np.int64)
            if length_tensor is None
            else length_tensor.as_numpy().reshape(-1).astype(np.int64)
        )
        if lengths.size != audio.shape[0] or (lengths > audio.shape[1]).any():
            raise ValueError(f"audio_length {lengths.tolist()} does not fit audio of shape {audio.shape}")
        if (lengths < MIN_SAMPLES).any():
            raise ValueError(f"utterances need at least {MIN_SAMPLES} samples (25 ms), got {lengths.tolist()}")
        waves = []
        for i, n in enumerate(lengths):
            wave = audio[i, : int(n)]
            if not np.isfinite(wave).all():
                raise ValueError(f"utterance {i} contains NaN or infinite samples")
            waves.append(wave)
        version = self.version
        raw = request.parameters()
        if raw:
            version = int(json.loads(raw).get("acoustic_version", version))
        return waves, version

    def _prepare(self, wave):
        if self.normalize:
            wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
        return wave.astype(np.float32, copy=False)

    def _windows(self, raw):
        """Long-form windows of an utterance, planned exactly as ``asr_optimize.transcribe`` plans them."""
        n = raw.shape[0]
        opts = self.long_form
        if self.chunking is None:
            largest = self.buckets[-1] if self.buckets else 0
            raise ValueError(
                f"utterance of {n / self.sample_rate:.1f} s is longer than the largest bucket "
                f"({largest / self.sample_rate:.1f} s) and long-form chunking (chunking.py) is not installed "
                "in this pipeline; send shorter audio or redeploy the pipeline"
            )
        limit = float(opts.get("max_duration_s", 4 * 3600.0))
        if n > limit * self.sample_rate:
            raise ValueError(f"utterance of {n / self.sample_rate:.0f} s is longer than the limit max_duration_s="
                             f"{limit:g} s; split it")
        chunk_s, stride_s = float(opts.get("chunk_s", 20.0)), float(opts.get("stride_s", 2.0))
        if opts.get("split_on_silence", False):
            margin = opts.get("noise_margin_db")
            return self.chunking.plan_speech_windows(
                raw, chunk_s, stride_s, self.sample_rate, self.frame_samples, self.receptive,
                float(opts.get("min_silence_s", 0.15)), float(opts.get("silence_db", -40.0)),
                float(opts.get("pad_before_s", 0.0)), float(opts.get("pad_after_s", 0.0)),
                float(opts.get("context_before_s", 0.0)), float(opts.get("context_after_s", 0.0)),
                None if margin is None else float(margin),
            )
        return self.chunking.plan_windows(n, chunk_s, stride_s, self.sample_rate, self.frame_samples, self.receptive)

    def _stitch(self, parts, windows, n):
        """The recording's greedy path from its windows' paths. Stitching only selects frames, so stitching the
        argmax equals the argmax of the stitched logits (in-process ``transcribe``): a path is stitched as a
        one-column array, skipped silence as blank frames, each cut's first frame as a word delimiter."""
        total = self.chunking.num_frames(n, self.frame_samples, self.receptive)
        columns = [np.asarray(p, dtype=np.float32)[:, None] for p in parts]
        fill, boundary = np.array([self.blank_id], np.float32), np.array([self.delimiter_id], np.float32)
        path = self.chunking.stitch(columns, windows, total, fill, boundary, self.frame_samples)
        return path[:, 0].astype(np.int64)

    async def _run(self, version, width, rows):
        """rows: list of (wave, on_path) sharing ``width``; ``on_path`` gets the utterance's greedy path.

        The serving version's fused engine runs in process (one hop); other versions go to the acoustic model in
        requests of <= max_rows. With ``pad_batches`` false (a model whose output zero padding changes, recorded in
        its version manifest) rows of different lengths are never padded to one width: each length goes alone."""
        lengths = sorted({wave.shape[0] for wave, _ in rows})
        if not self.pad_batches and lengths != [width]:
            await asyncio.gather(*(self._run(version, n, [row for row in rows if row[0].shape[0] == n])
                                   for n in lengths))
            return
        if self.serving is not None and version == self.version:
            paths = self.serving.greedy_ids([wave for wave, _ in rows], width)
            for (wave, on_path), path in zip(rows, paths, strict=True):
                on_path(path[: self._frames(wave.shape[0])])
            return
        for start in range(0, len(rows), self.max_rows):
            part = rows[start : start + self.max_rows]
            values = np.zeros((len(part), width), dtype=np.float32)
            mask = np.zeros((len(part), width), dtype=np.int64)
            for i, (wave, _) in enumerate(part):
                values[i, : wave.shape[0]] = wave
                mask[i, : wave.shape[0]] = 1
            inputs = [pb_utils.Tensor("input_values", values)]
            if self.with_mask:
                inputs.append(pb_utils.Tensor("attention_mask", mask))
            response = await pb_utils.InferenceRequest(
                model_name=self.acoustic, model_version=version, requested_output_names=["logits"], inputs=inputs
            ).async_exec()
            if response.has_error():
                raise RuntimeError(f"{self.acoustic} version {version}: {response.error().message()}")
            logits = pb_utils.get_output_tensor_by_name(response, "logits").as_numpy()
            for i, (wave, on_path) in enumerate(part):
                on_path(logits[i, : self._frames(wave.shape[0])].argmax(axis=-1))

    def _window_width(self, version, size, widest):
        """Width a long-form window of ``size`` samples is padded to. One hop: the smallest length bucket that holds
        it (else the engine's long-form window), as an utterance of that length, so windows of concurrent
        recordings and short requests share engine calls and a short speech run is not padded to a 20 s window
        (on the H200 that padding made 16 x 10 min requests 13 times the engine work). By BLS: the recording's
        widest window, all its windows in one acoustic request."""
        serving = self.serving if version == self.version else None
        if serving is None or not self.pad_batches:
            return widest
        for bucket in self.buckets:
            if size <= bucket:
                return bucket
        return serving.window if size <= serving.window else size

    async def execute(self, requests):
        if self.serving is not None:
            self.serving.enter()
        started = time.perf_counter()
        texts = {}
        errors = {}
        groups = {}  # (version, width) -> [(wave, callback)]
        owners = {}  # (version, width) -> request indexes that depend on the group
        for r, request in enumerate(requests):
            try:
                waves, version = self._parse(request)
                texts[r] = [None] * len(waves)
                for u, raw in enumerate(waves):
                    if float(np.abs(raw).max()) < SILENCE_PEAK:
                        texts[r][u] = ""
                        continue
                    target = self._target(raw.shape[0])
                    if target is not None:
                        def done(path, r=r, u=u):
                            texts[r][u] = self._decode(path)

                        groups.setdefault((version, target), []).append((self._prepare(raw), done))
                        owners.setdefault((version, target), set()).add(r)
                        continue
                    windows = self._windows(raw)
                    if not windows:  # nothing but silence
                        texts[r][u] = ""
                        continue
                    mode = self.long_form.get("normalization", "window") if self.normalize else None
                    stats = self.chunking.window_stats(raw, windows, mode, self.frame_samples)
                    parts = [None] * len(windows)
                    widest = max(w.end - w.start for w in windows)
                    for k, window in enumerate(windows):
                        def part_done(path, r=r, u=u, k=k, parts=parts, windows=windows, n=raw.shape[0]):
                            parts[k] = path
                            if all(p is not None for p in parts):
                                texts[r][u] = self._decode(self._stitch(parts, windows, n))

                        piece = self.chunking.normalized(raw[window.start : window.end], stats[k])
                        width = self._window_width(version, piece.shape[0], widest)
                        groups.setdefault((version, width), []).append((piece, part_done))
                        owners.setdefault((version, width), set()).add(r)
            except Exception as exc:
                errors[r] = str(exc)
        if self.serving is not None:
            self.serving.tick("inputs", started)
        keys = list(groups)
        results = await asyncio.gather(*(self._run(v, w, groups[(v, w)]) for v, w in keys), return_exceptions=True)
        for key, result in zip(keys, results, strict=True):
            if isinstance(result, BaseException):
                for r in owners[key]:
                    errors.setdefault(r, str(result))
        responses = []
        for r in range(len(requests)):
            if r in errors:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(errors[r])))
                continue
            text = np.array([[t.encode("utf-8")] for t in texts[r]], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("text", text)]))
        if self.serving is not None:
            self.serving.executed(len(requests))
        return responses

    def finalize(self):
        serving, self.serving = getattr(self, "serving", None), None
        if serving is not None:
            serving.close()
