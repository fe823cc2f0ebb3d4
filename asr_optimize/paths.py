"""Where bundled assets live (inside the installed package, so they work from any working directory)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL = ASSETS / "demo-model"
DEMO_TESTSET = ASSETS / "demo-testset"
DEMO_CALIBRATION = ASSETS / "demo-calibration"  # fp8 calibration speech: dev texts of the demo model, no test text
# config.json + vocab.json + preprocessor_config.json of ai4bharat/indicwav2vec-hindi (no weights): the real
# architecture (wav2vec2-large, 24 layers, 315.5 M parameters) for speed measurements with random weights
REPLICA_CONFIG = ASSETS / "replica-config"
