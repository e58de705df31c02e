"""`salsa demo`: `salsa run` on a quick preset of the default model and the built-in task."""

from __future__ import annotations

from pathlib import Path

DEMO_PRESET = Path(__file__).parent / "presets" / "demo.yaml"


def run_demo(output_dir: str | Path = "runs/demo", show_progress: bool = True) -> Path:
    """The whole pipeline on the demo preset; prints the result table and returns the report directory."""
    from salsa.pipeline import run_pipeline  # torch: `import salsa.demo` (the CLI's) does not load it
    from salsa.report import print_summary

    report = run_pipeline(DEMO_PRESET, [f"run.output_dir={output_dir}"], show_progress=show_progress)
    print_summary(report)
    return report
