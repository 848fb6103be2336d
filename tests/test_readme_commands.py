"""Every command block of the README runs as written, in a tiny form.

The test reads the README's ```bash blocks (``\\`` continuations joined, comments dropped), keeps each
``sonofm ...`` and ``accelerate launch ... -m sonofm ...`` line in its order and argument order, and
runs it from a fresh working folder beside a tiny ``../shared/data`` (a few files of each of the real
BUSI, CCA and POCUS sets, copied into the temporary folder; skipped without the real data). Only size overrides
are appended (steps, image size, batch size, folds); paths under ``/data/`` (the README's examples of
a user's own archive) point at folders made here (DICOMs, an image folder, the shards). A line that
needs more GPUs than this machine has is checked as far as it can be without them: its sonofm
arguments parse and its config loads. The two set-up lines install packages; their ``sonofm`` /
``pytest`` halves are the quickstart (run here with ``--small``) and this suite itself.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import write_fake_hub_cache

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

#: Appended to each command (after the README's own arguments), so it runs in seconds.
TINY: dict[str, list[str]] = {
    "shards build": ["max_side=64", "samples_per_shard=64", "workers=1"],
    "shards inspect": [],
    "pretrain": ["steps=2", "data.img_size=64", "data.batch_size=4", "data.num_workers=0", "optim.warmup_steps=1"],
    "probe": ["data.img_size=64", "data.batch_size=8", "data.num_workers=0", "folds=2"],
    "finetune seg": ["steps=2", "eval_every=0", "data.img_size=64", "data.batch_size=2", "data.num_workers=0"],
    "finetune universal": ["steps=2", "eval_every=0", "data.img_size=64", "data.batch_size=2",
                           "data.num_workers=0"],
    "export": [],
    "predict": ["--batch-size", "4"],
    "score": [],
    "quickstart": ["--small"],  # into runs/quickstart, whose shards a later README line pretrains on
}


def readme_commands(text: str) -> list[str]:
    """The shell lines of the README's bash blocks that run sonofm, in order."""
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
            if re.search(r"(^|&& )sonofm |-m sonofm ", line):
                lines.append(line)
    return lines


def _command_of(argv: list[str]) -> str:
    """``shards build``, ``pretrain``, ``finetune seg``... of a sonofm argv (after ``sonofm``)."""
    head = argv[0]
    return f"{head} {argv[1]}" if head in ("shards", "finetune") else head


def _sonofm_argv(line: str) -> tuple[list[str], list[str]]:
    """(launcher argv before sonofm, sonofm's own argv) of one README line; ``pip install ... &&`` dropped."""
    line = line.split("&& ")[-1]
    words = shlex.split(os.path.expandvars(line))
    if words[0] == "sonofm":
        return [], words[1:]
    i = words.index("-m")
    return words[:i], words[i + 2:]


def _gpus_needed(launcher: list[str]) -> int:
    if not launcher or "--cpu" in launcher:
        return 0
    if "--num_processes" in launcher and "--multi_gpu" in launcher and "--num_machines" not in launcher:
        n = int(launcher[launcher.index("--num_processes") + 1])
        return 0 if n <= 2 and not torch.cuda.is_available() else n  # gloo on CPU, as the tests do
    return 10**6 if "--num_machines" in launcher else 1


def _tiny_data(shared: Path | None, dst: Path) -> None:
    """A tiny ``shared/data``: a few files of each real set, copied into the test's temporary folder
    (links out of a source folder are refused by the build, as they should be)."""
    def link(src: Path, to: Path) -> None:
        to.parent.mkdir(parents=True, exist_ok=True)
        if not to.exists():
            shutil.copy2(src, to)

    busi = shared / "busi" / "Dataset_BUSI_with_GT"
    for cls in ("benign", "malignant", "normal"):
        for image in sorted((busi / cls).glob(f"{cls} (*).png"))[:8]:
            if "_mask" in image.name:
                continue
            link(image, dst / "busi" / "Dataset_BUSI_with_GT" / cls / image.name)
            for mask in (busi / cls).glob(image.stem + "_mask*.png"):
                link(mask, dst / "busi" / "Dataset_BUSI_with_GT" / cls / mask.name)
    cca = shared / "cca" / "Common Carotid Artery Ultrasound Images"
    recordings = sorted({f.name.split("_slice_")[0] for f in (cca / "US images").iterdir()})  # all 15: every split gets some
    for rec in recordings:
        for frame in sorted((cca / "US images").glob(f"{rec}_slice_*"))[::15]:
            for sub in ("US images", "Expert mask images"):
                if (cca / sub / frame.name).exists():
                    link(cca / sub / frame.name, dst / "cca" / cca.name / sub / frame.name)
    pocus = shared / "pocus"
    for f in sorted((pocus / "pocus_images").rglob("*")):
        if f.is_file():
            link(f, dst / "pocus" / f.relative_to(pocus))
    videos = sorted((p for p in (pocus / "pocus_videos").rglob("*.mp4") if p.is_file()), key=lambda p: p.stat().st_size)
    for f in videos[:2]:
        link(f, dst / "pocus" / f.relative_to(pocus))
    for f in pocus.glob("*.csv"):
        link(f, dst / "pocus" / f.name)


def _user_archive(data: Path) -> None:
    """The README's own-archive example: ``/data/pacs_export`` (DICOMs) and ``/data/archive`` (images)."""
    from sonofm.datasets.synthetic.dicom_writer import write_us_dicom

    rng = np.random.default_rng(0)
    (data / "pacs_export").mkdir(parents=True)
    for i in range(4):
        frame = (rng.random((96, 96)) * 200).astype(np.uint8)
        write_us_dicom(data / "pacs_export" / f"s{i}.dcm", frame[None], photometric="MONOCHROME2",
                       patient_id=f"PAT^{i // 2}", body_part="BREAST")
    for i in range(4):
        sub = data / "archive" / f"study{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((80, 96)) * 255).astype(np.uint8)).save(sub / f"img{i}.png")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sonofm.paths import shared_data_dir

    root = tmp_path_factory.mktemp("readme")
    shared = shared_data_dir()
    if not (shared / "busi").is_dir():
        pytest.skip(f"real data not found at {shared} (set SONOFM_SHARED_DATA)")
    _tiny_data(shared, root / "shared" / "data")
    _user_archive(root / "data")
    # the README's FM_UIA root (/data/fmuia), made in the challenge's layout from the tiny real data
    from sonofm.datasets.sources.fmuia_root import make_fmuia_root

    make_fmuia_root(root / "data" / "fmuia", n=3, n_val=2, shared=root / "shared" / "data")
    # the published weights the README names, as random weights in timm's format under the Hugging Face
    # cache's layout (nothing is downloaded; _run points HF_HUB_CACHE here, offline)
    for name in ("convnextv2_atto.fcmae_ft_in1k", "convnextv2_atto.fcmae"):
        write_fake_hub_cache(root / "hf", name)
    work = root / "work"
    work.mkdir()
    # the README's taxonomy example, as its comment shows it
    (work / "my_taxonomy.yaml").write_text(
        "regions: {pelvis: [ovary]}\nsources: {gyn_clinic: {organ: ovary, labels: [cyst, solid]}}\n")
    return root


def _run(launcher: list[str], argv: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    def local(arg: str) -> str:  # an absolute /data/... of the README -> the folders made here
        arg = re.sub(r"(?<![\w.])/data/shards", "shards/shared", arg)
        return re.sub(r"(?<![\w.])/data/", f"{root / 'data'}/", arg)

    argv = [local(a) for a in argv]
    argv = argv + TINY[_command_of(argv)]
    if launcher:
        accelerate = shutil.which("accelerate")  # launcher[:2] == ["accelerate", "launch"]
        head = [accelerate, "launch"] if accelerate else [sys.executable, "-m", "accelerate.commands.launch"]
        cmd = [*head, *launcher[2:], "-m", "sonofm", *argv]
    else:
        cmd = [sys.executable, "-m", "sonofm", *argv]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "HF_HUB_CACHE": str(root / "hf"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, cwd=root / "work", env=env, capture_output=True, text=True, timeout=900)


#: Stages that end by naming what they wrote (checked: every such path exists).
SAYS_WHAT_IT_WROTE = ("shards build", "shards inspect", "pretrain", "probe", "finetune seg", "finetune universal",
                      "export", "quickstart", "predict", "score")


def named_paths(printed: str, work: Path) -> list[Path]:
    """The files and folders a command's output names: absolute ones inside ``work`` and the
    working-folder-relative ``runs/``, ``shards/``, ``exports/`` ones."""
    found = re.findall(rf"({re.escape(str(work))}/[^\s:;,'\"()]+|(?<![\w/.])(?:runs|shards|exports)/[^\s:;,'\"()]*)", printed)
    return [Path(p.rstrip(".")) if Path(p).is_absolute() else work / p.rstrip(".") for p in found]


def test_readme_lists_the_commands_this_test_knows() -> None:
    commands = readme_commands(README.read_text())
    assert len(commands) >= 12, commands
    for line in commands:
        _, argv = _sonofm_argv(line)
        assert _command_of(argv) in TINY, f"README runs {line!r}: give it a tiny form in TINY"


def test_every_readme_command_runs_as_written(workspace: Path) -> None:
    from sonofm.cli import build_parser
    from sonofm.config import FinetuneConfig, PretrainConfig, ProbeConfig, ShardsConfig, load_config

    schemas = {"pretrain": PretrainConfig, "probe": ProbeConfig, "shards build": ShardsConfig,
               "finetune seg": FinetuneConfig, "finetune universal": FinetuneConfig}
    ran, parsed_only = [], []
    for line in readme_commands(README.read_text()):
        launcher, argv = _sonofm_argv(line)
        if _gpus_needed(launcher) > torch.cuda.device_count():
            args = build_parser().parse_args(argv)  # what can be checked without the GPUs
            command = _command_of(argv)
            if command in schemas:
                load_config(schemas[command], args.config, args.overrides)
            parsed_only.append(line)
            continue
        done = _run(launcher, argv, workspace)
        assert done.returncode == 0, f"README line failed: {line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        if _command_of(argv) in SAYS_WHAT_IT_WROTE and "--dry-run" not in argv:
            named = named_paths(done.stdout, workspace / "work")
            assert named, f"{line}: the output names no file or folder it wrote:\n{done.stdout[-2000:]}"
            missing = [str(p) for p in named if not p.exists()]
            assert not missing, f"{line}: names {missing}, which do not exist"
        ran.append(line)
    work = workspace / "work"
    for made in ("shards/shared", "shards/mine", "runs/cpu_atto/checkpoints/last", "runs/probe/probe.json",
                 "exports/sonofm-atto/model.safetensors", "exports/sonofm-atto/features.safetensors",
                 "runs/fmuia_val/detection_predictions.json", "runs/fmuia_val/scores.json", "runs/fmuia_pretrained/best"):
        assert (work / made).exists(), made
    assert len(ran) >= 12 and len(parsed_only) <= 2, (ran, parsed_only)


def test_readme_python_block_runs(workspace: Path) -> None:
    """The export section's Python snippet, on the export the commands above made."""
    work = workspace / "work"
    if not (work / "exports" / "sonofm-atto").is_dir():
        pytest.skip("needs test_every_readme_command_runs_as_written first")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    cwd = os.getcwd()
    os.chdir(work)
    try:
        for block in blocks:
            exec(compile(block, "README", "exec"), {})
    finally:
        os.chdir(cwd)
