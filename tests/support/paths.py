from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "vagrant" / "lab.yml"
