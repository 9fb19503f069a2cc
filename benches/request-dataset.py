#!/usr/bin/env python3
"""Builds the compliance-request benchmark dataset: 200 IM conversations of
50 messages each (10,000 messages, deletions and edits included) spread over
30 days, 20 configured users, an exportd.toml and a request for the month.

    benches/request-dataset.py DIR
    /usr/bin/time -v exportd request submit --config DIR/exportd.toml DIR/req.json

(BENCHMARKS.md, "IM compliance request"). Standard library only.
"""
import datetime
import os
import random
import sys

out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "reqbench")
for d in ("spool", "state", "archive", "keys"):
    os.makedirs(os.path.join(out, d), exist_ok=True)
random.seed(7)
base = datetime.datetime(2026, 10, 1)
USERS = 20
n = 0
for c in range(200):
    u = c % USERS + 1
    kind = ["direct", "group", "team"][c % 3]
    start = base + datetime.timedelta(days=random.randint(0, 29), seconds=random.randint(0, 80000))
    d = os.path.join(out, "spool", start.strftime("%Y/%m/%d"))
    os.makedirs(d, exist_ok=True)
    rid = f"im-{c:04d}"
    msgs, t = [], start
    for m in range(50):
        t += datetime.timedelta(minutes=random.randint(1, 300))
        ts = t.strftime("%Y.%m.%d %H:%M:%S.000")
        frm = f"u-{u:04d}" if m % 2 == 0 else f"x-{c}"
        if m % 17 == 5:
            msgs.append(f'<message id="m-{m}" timestamp="{ts}" from="{frm}" deleted="true" '
                        f'deleted_at="{ts}" deleted_by="{frm}">deleted {m}</message>')
        elif m % 13 == 3:
            msgs.append(f'<message id="m-{m}" timestamp="{ts}" from="{frm}">edited text {m}'
                        f'<edit timestamp="{ts}" by="{frm}">old text {m}</edit></message>')
        else:
            msgs.append(f'<message id="m-{m}" timestamp="{ts}" from="{frm}">message {m} of '
                        f'conversation {c} about the 5y swap</message>')
        n += 1
    with open(os.path.join(d, rid + ".im"), "w") as f:
        f.write(f'<?xml version="1.0" encoding="UTF-8"?>\n<transcript conversation_id="c-{c}" '
                f'kind="{kind}" title="Chat {c}" owner="u-{u:04d}">\n<participants>'
                f'<participant id="u-{u:04d}" address="trader{u:04d}@corp.example" name="Trader {u}" internal="true"/>'
                f'<participant id="x-{c}" address="x{c}@partner.example" name="Partner {c}" internal="false"/>'
                f'</participants>\n' + "\n".join(msgs) + "\n</transcript>\n")
    with open(os.path.join(d, rid + ".xml"), "w") as f:
        f.write(f'<?xml version="1.0" encoding="UTF-8"?>\n<recording><id>{rid}</id><modality_id>im</modality_id>'
                f'<source_platform>symphony</source_platform><native_id>N-{c}</native_id>'
                f'<native_call_id>C-{c}</native_call_id><location>rec01</location>'
                f'<start_time>{start.strftime("%Y.%m.%d %H:%M:%S.000")}</start_time>'
                f'<end_time>{t.strftime("%Y.%m.%d %H:%M:%S.000")}</end_time>'
                f'<recorded_extension>sip:trader{u:04d}@corp.example</recorded_extension>'
                f'<source_caller_id>x</source_caller_id><files><file role="transcript">{rid}.im</file></files></recording>\n')
cfg = (f'agent_id = "bench"\nspool = ["{out}/spool"]\nstate_dir = "{out}/state"\nkeys_dir = "{out}/keys"\n'
       f'[[targets]]\nid = "nas"\nkind = "fs"\npath = "{out}/archive"\n'
       f'[[policies]]\nid = "p"\nname = "P"\ntargets = ["nas"]\n')
for u in range(1, USERS + 1):
    cfg += (f'[[users]]\nid = "u-{u:04d}"\nname = "Trader {u}"\nemail = "trader{u:04d}@corp.example"\n'
            f'extensions = ["sip:trader{u:04d}@corp.example"]\npolicies = ["p"]\n')
with open(os.path.join(out, "exportd.toml"), "w") as f:
    f.write(cfg)
with open(os.path.join(out, "req.json"), "w") as f:
    f.write('{"request_id": "r-bench-1", "time_from": "2026-10-01T00:00:00Z", '
            '"time_to": "2026-11-01T00:00:00Z", "target": "nas", "format": "glip"}\n')
print(f"{n} messages in {out}; run: exportd request submit --config {out}/exportd.toml {out}/req.json")
