"""Where bundled assets live (inside the installed package, so they work from any working directory)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL = ASSETS / "demo-model"
DEMO_TESTSET = ASSETS / "demo-testset"
