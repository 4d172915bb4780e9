"""What a model profile needs from the Hugging Face Hub, whether it is here, and fetching it.

Each hub role downloads only the files it loads (`allow_patterns` per role: the diffusers folders'
configs, tokenizer and safetensors weights of the profile's variant; the IP-Adapter's one weight file
and image encoder; a single-file checkpoint's configs). huggingface_hub honours HF_HOME / HF_HUB_CACHE
(where), HF_TOKEN (gated models), HF_ENDPOINT (a mirror) and HF_HUB_OFFLINE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .profiles import ModelProfile, RoleSource

_CONFIGS = ["*.json", "*.txt"]  # model_index, configs, the tokenizer's vocab and merges
_MARKERS = ("model_index.json", "config.json")  # one of them is in every diffusers folder


@dataclass(frozen=True)
class HubDownload:
    role: str
    repo_id: str
    allow_patterns: tuple[str, ...]
    ignore_patterns: tuple[str, ...] = ()
    what: str = "weights"  # or "config" (a single file's configs and tokenizer)


def role_patterns(spec: RoleSource, role: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(allow_patterns, ignore_patterns) for the files `role` loads from its hub repo."""
    if role == "ip_adapter":
        sub = spec.subfolder or "models"
        return (f"{sub}/{spec.weight_name or 'ip-adapter_sd15.safetensors'}", f"{sub}/image_encoder/*"), ()
    if spec.variant:
        return (*_CONFIGS, f"*.{spec.variant}.safetensors"), ()
    return (*_CONFIGS, "*.safetensors"), ("*.fp16.safetensors", "*.fp32.safetensors", "*.ema*", "*.non_ema*")


def hub_downloads(profile: ModelProfile) -> list[HubDownload]:
    """One download per hub repo the profile loads (tiny roles and local paths need none)."""
    downloads = []
    for role, spec in profile.roles.items():
        if spec.is_tiny:
            continue
        if spec.is_single_file:
            config = profile.single_file_config(role) if role in ("sd", "controlnet") else None
            if config and not Path(config).exists() and not config.startswith(("/", ".", "~")):
                downloads.append(HubDownload(role, config, (*_CONFIGS,), what="config"))
            continue
        if spec.is_local_path:
            continue
        allow, ignore = role_patterns(spec, role)
        downloads.append(HubDownload(role, spec.source, allow, ignore))
    return downloads


def local_status(profile: ModelProfile) -> list[dict]:
    """Per role: its source, and whether it is here (`present`) with where, or what is missing."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    rows = []
    hub = {(d.role, d.what): d for d in hub_downloads(profile)}
    for role, spec in profile.roles.items():
        row = {"role": role, "source": spec.source, "present": True, "where": None, "missing": None}
        if spec.is_tiny:
            row["where"] = "built locally on first use (random weights)"
        elif spec.is_single_file or spec.is_local_path:
            try:
                row["where"] = profile.resolve(role)
                if not Path(str(row["where"])).exists():
                    raise FileNotFoundError(row["where"])
            except Exception as exc:  # ModelNotAvailableError or a missing path: say which
                row.update(present=False, missing=str(exc))
        config = hub.get((role, "config"))
        download = hub.get((role, "weights")) or config
        if download is not None:
            try:
                folder = Path(
                    snapshot_download(
                        download.repo_id,
                        allow_patterns=list(download.allow_patterns),
                        ignore_patterns=list(download.ignore_patterns) or None,
                        local_files_only=True,
                    )
                )
                if (
                    not any((folder / spec.subfolder if spec.subfolder else folder).rglob(m) for m in _MARKERS)
                    and role != "ip_adapter"
                ):
                    raise LocalEntryNotFoundError(f"no config in {folder}")
                if download is config:
                    row["config"] = str(folder)
                else:
                    row["where"] = str(folder)
            except (LocalEntryNotFoundError, FileNotFoundError, OSError) as exc:
                row.update(
                    present=False,
                    missing=f"{download.what} of {download.repo_id} not in the hub cache "
                    f"({str(exc).splitlines()[0][:120]})",
                )
        rows.append(row)
    return rows


def plan(download: HubDownload, local_dir: Path | None = None) -> dict:
    """Size to fetch (bytes still missing, and in all) and the licence, before anything is downloaded."""
    from huggingface_hub import HfApi, snapshot_download

    files = snapshot_download(
        download.repo_id,
        allow_patterns=list(download.allow_patterns),
        ignore_patterns=list(download.ignore_patterns) or None,
        dry_run=True,
        local_dir=local_dir,
    )
    info = HfApi().model_info(download.repo_id)
    card = info.card_data.to_dict() if info.card_data is not None else {}
    licence = card.get("license") or next(
        (t.split(":", 1)[1] for t in info.tags or [] if t.startswith("license:")), "unknown"
    )
    return {
        "role": download.role,
        "repo_id": download.repo_id,
        "what": download.what,
        "files": len(files),
        "bytes": sum(f.file_size for f in files),
        "bytes_to_fetch": sum(f.file_size for f in files if f.will_download),
        "licence": licence,
    }


def fetch(download: HubDownload, local_dir: Path | None = None) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(
        download.repo_id,
        allow_patterns=list(download.allow_patterns),
        ignore_patterns=list(download.ignore_patterns) or None,
        local_dir=local_dir,
    )
