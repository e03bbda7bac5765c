"""Offline checks for auditors, no database needed:

    python -m app.audit verify-export lethe-audit.jsonl
    python -m app.audit verify-certificate certificate.json audit-public-key.pem

``lethe-audit.jsonl`` is what ``GET /v1/audit/export`` returns; ``certificate.json`` what
``GET /v1/forget/{id}/certificate`` returns; the PEM is ``public_key_pem`` of
``GET /v1/keys/audit``. Exit status 0 = valid, 1 = invalid.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m app.audit")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("verify-export")
    e.add_argument("file")
    c = sub.add_parser("verify-certificate")
    c.add_argument("certificate")
    c.add_argument("public_key_pem")
    args = p.parse_args(argv)
    if args.command == "verify-export":
        from .service import verify_lines

        with open(args.file, "rb") as f:
            result = verify_lines(f)
        print(json.dumps(result))
        return 0 if result["ok"] else 1
    from .signing import verify_document

    with open(args.certificate) as f:
        doc = json.load(f)
    with open(args.public_key_pem, "rb") as f:
        pem = f.read()
    ok = verify_document(pem, doc["canonical"], doc["signature"]["value"]) and \
        json.loads(doc["canonical"]) == doc["certificate"]
    print("certificate valid" if ok else "certificate INVALID: signature or content does not match")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
