"""Parses .eml files with Python's email package (an independent MIME parser) and prints, as
one JSON list, what gatehouse's mail tests check: headers, content types and decoded parts."""
import email
import email.policy
import json
import sys

out = []
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        msg = email.message_from_binary_file(f, policy=email.policy.default)
    parts = []
    defects = [str(d) for d in msg.defects]
    if msg.is_multipart():
        for part in msg.iter_parts():
            defects += [str(d) for d in part.defects]
            parts.append({"type": part.get_content_type(), "body": part.get_content()})
    out.append(
        {
            "to": str(msg["To"]),
            "from": str(msg["From"]),
            "subject": str(msg["Subject"]),
            "message_id": str(msg["Message-ID"]),
            "date": msg["Date"] is not None,
            "auto_submitted": str(msg["Auto-Submitted"]),
            "type": msg.get_content_type(),
            "parts": parts,
            "defects": defects,
        }
    )
print(json.dumps(out))
