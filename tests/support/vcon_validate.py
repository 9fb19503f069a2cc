"""Validates vCon files with the PyPI package `vcon` (tests/vcon_validate.rs).

Usage: python3 vcon_validate.py REPORT.json FILE.vcon.json...

Writes one JSON object to REPORT.json (not stdout: the package logs there):
  {"vcon_version": "...", "results": [
     {"path": ..., "valid": bool, "errors": [...], "hash_mismatches": [...]}]}

`valid`/`errors` are exactly what `Vcon.validate_file(path)` returned.
`hash_mismatches` re-checks, with the package's own `compute_content_hash`,
every dialog and attachment `content_hash` against the file named by its
`filename` in the vCon's folder (an independent check of the Rust encoding).
Exit status 0 when it ran (whatever the results), 2 when `vcon` is missing.
"""

import json
import os
import sys
import warnings

warnings.simplefilter("ignore")  # quieten deprecation warnings on import

try:
    from importlib.metadata import version
    from vcon import Vcon
    from vcon.dialog import compute_content_hash
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(json.dumps({"error": f"cannot import vcon: {e}"}))
    sys.exit(2)


def hash_mismatches(path):
    folder = os.path.dirname(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except Exception as e:  # validate_file reports it too
        return [f"cannot read the vCon: {e}"]
    out = []
    for kind in ("dialog", "attachments"):
        for i, obj in enumerate(doc.get(kind, [])):
            if "content_hash" not in obj:
                continue
            name = obj.get("filename")
            try:
                with open(os.path.join(folder, name), "rb") as f:
                    got = compute_content_hash(f.read(), "sha512")
            except Exception as e:  # missing file, no filename
                out.append(f"{kind}[{i}]: cannot read {name!r}: {e}")
                continue
            if got != obj["content_hash"]:
                out.append(f"{kind}[{i}] {name}: vCon says {obj['content_hash']}, file is {got}")
    return out


def main(report, paths):
    results = []
    for p in paths:
        valid, errors = Vcon.validate_file(p)
        results.append(
            {
                "path": p,
                "valid": valid,
                "errors": list(errors),
                "hash_mismatches": hash_mismatches(p),
            }
        )
    with open(report, "w", encoding="utf-8") as f:
        json.dump({"vcon_version": version("vcon"), "results": results}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
