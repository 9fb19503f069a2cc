#!/usr/bin/env python3
"""Starts moto's S3 server for exportd's S3 integration tests.

Started by the Rust tests (tests/s3_*.rs); never used in production.

* Binds 127.0.0.1 on a free port (optionally with TLS from a CA made here),
  turns on moto's IAM authentication (so a wrong key or signature is refused
  as on AWS and the agent's SigV4 signing is really checked), creates an IAM
  user with an access key, and prints one JSON line:
  {"port": N, "access_key": "...", "secret_key": "...", "ca": "path or null"}.
* Then answers JSON commands, one per stdin line, using boto3 (an
  independent S3 client, so the tests do not check the agent with itself).
* Exits when stdin closes, so the server dies with the test process.

moto 5.2 differs from AWS in three places (shared/notes/moto.md). The agent
does what AWS requires; the mock is patched here instead:
1. Object Lock headers on CreateMultipartUpload are ignored by moto, so a
   completed multipart object would have no retention. AWS applies them to
   the completed object: patched below to do the same.
2. moto parses the retain-until date only in the `...Z` form. The agent sends
   exactly that form (RFC 3339 UTC without fraction), which AWS accepts too:
   no patch needed.
3. moto wants Content-MD5 or `x-amz-sdk-checksum-algorithm` on a lock PUT;
   AWS is content with `x-amz-checksum-sha256` alone. The agent sends
   `x-amz-sdk-checksum-algorithm: SHA256` beside it (as the AWS SDKs do, and
   AWS accepts), so no patch is needed; moto also needs that header to store
   the checksum it returns on HEAD.
4. moto checks a request's signature against its query string as decoded
   (`prefix=ny/` instead of `prefix=ny%2F`), so every correctly signed
   listing with a `/` in a parameter (ListObjectsV2 with a prefix or a
   delimiter, boto3's too) is refused with SignatureDoesNotMatch. AWS signs
   the query as sent: patched below to encode it again as SigV4 requires.
"""
import hashlib
import json
import re
import sys
import tempfile
import datetime
import os

import boto3
import botocore.config
import moto.settings
from moto.s3 import exceptions as s3_exceptions
from moto.s3.models import S3Backend
from moto.s3.responses import S3Response
from moto.iam.models import iam_backends
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server
import threading

ACCOUNT = "123456789012"

# --- gap 1: Object Lock on CreateMultipartUpload -----------------------------
_orig_post = S3Response._key_response_post


def _patched_post(self, request, body, bucket_name, query, key_name):
    lock = None
    if body == b"" and "uploads" in query:
        mode = request.headers.get("x-amz-object-lock-mode")
        until = request.headers.get("x-amz-object-lock-retain-until-date")
        if mode or until:
            if not self.backend.get_bucket(bucket_name).object_lock_enabled:
                raise s3_exceptions.LockNotEnabled
            lock = (mode, until)
    status, headers, resp = _orig_post(self, request, body, bucket_name, query, key_name)
    if lock:
        text = resp.decode() if isinstance(resp, bytes) else str(resp)
        m = re.search(r"<UploadId>([^<]+)</UploadId>", text)
        if m:
            mp = self.backend.get_bucket(bucket_name).multiparts.get(m.group(1))
            if mp is not None:
                mp.exportd_lock = lock
    return status, headers, resp


_orig_complete = S3Backend.complete_multipart_upload


def _patched_complete(self, bucket_name, multipart_id, body):
    mp = self.get_bucket(bucket_name).multiparts.get(multipart_id)
    lock = getattr(mp, "exportd_lock", None)
    key = _orig_complete(self, bucket_name, multipart_id, body)
    if key is not None and lock:
        key.lock_mode, key.lock_until = lock
    return key


S3Response._key_response_post = _patched_post

# --- gap 4: listing signatures -------------------------------------------------
from moto.iam.access_control import S3IAMRequest


_orig_create_aws_request = S3IAMRequest._create_aws_request


def _patched_create_aws_request(self):
    from urllib.parse import quote, unquote
    path, sep, query = self._path.partition("?")
    if sep:
        pairs = []
        for pair in query.split("&"):
            k, eq, v = pair.partition("=")
            pairs.append(quote(unquote(k), safe="-_.~") + eq + quote(unquote(v), safe="-_.~"))
        self._path = path + "?" + "&".join(pairs)
    return _orig_create_aws_request(self)


S3IAMRequest._create_aws_request = _patched_create_aws_request
S3Backend.complete_multipart_upload = _patched_complete


def make_tls(dirname):
    """A CA and a server certificate for 127.0.0.1/localhost, made here."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "exportd test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = {n: os.path.join(dirname, n) for n in ("ca.pem", "cert.pem", "key.pem")}
    with open(paths["ca.pem"], "wb") as f:
        f.write(ca.public_bytes(pem))
    with open(paths["cert.pem"], "wb") as f:
        f.write(cert.public_bytes(pem))
    with open(paths["key.pem"], "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths


def main():
    tls = "--tls" in sys.argv
    iam = iam_backends[ACCOUNT]["global"]
    iam.create_user("us-east-1", "exportd")
    iam.put_user_policy("exportd", "all", json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    ak = iam.create_access_key("exportd")
    # From here on every request must be signed by a known key.
    moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 0

    ssl_context = None
    ca_path = None
    if tls:
        paths = make_tls(tempfile.mkdtemp(prefix="exportd-moto-tls-"))
        ssl_context = (paths["cert.pem"], paths["key.pem"])
        ca_path = paths["ca.pem"]
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=ssl_context)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()

    scheme = "https" if tls else "http"
    s3 = boto3.client(
        "s3", endpoint_url=f"{scheme}://127.0.0.1:{port}", region_name="us-east-1",
        aws_access_key_id=ak.access_key_id, aws_secret_access_key=ak.secret_access_key,
        verify=ca_path if tls else None,
        config=botocore.config.Config(s3={"addressing_style": "path"},
                                      retries={"max_attempts": 1}))

    print(json.dumps({"port": port, "access_key": ak.access_key_id,
                      "secret_key": ak.secret_access_key, "ca": ca_path}), flush=True)

    for line in sys.stdin:
        try:
            cmd = json.loads(line)
            out = run(s3, cmd)
        except Exception as e:  # report, keep serving
            code = getattr(e, "response", {}).get("Error", {}).get("Code")
            out = {"error": code or type(e).__name__, "message": str(e)}
        print(json.dumps(out), flush=True)
    server.shutdown()


def run(s3, cmd):
    op, b = cmd["op"], cmd.get("bucket")
    if op == "create_bucket":
        s3.create_bucket(Bucket=b, ObjectLockEnabledForBucket=cmd.get("lock", False))
        return {"ok": True}
    if op == "get":
        body = s3.get_object(Bucket=b, Key=cmd["key"])["Body"].read()
        return {"len": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    if op == "head":
        h = s3.head_object(Bucket=b, Key=cmd["key"], ChecksumMode="ENABLED")
        return {k: str(v) for k, v in h.items() if k != "ResponseMetadata"}
    if op == "versions":
        # Read from moto's backend: moto 5.2's signature check refuses
        # boto3's own ListObjectVersions request (a moto bug, not ours).
        from moto.s3.models import s3_backends
        versions = s3_backends[ACCOUNT]["aws"].list_object_versions(b, prefix=cmd["key"])[0]
        return {"versions": [v.version_id for v in versions if v.name == cmd["key"]]}
    if op == "delete_version":
        s3.delete_object(Bucket=b, Key=cmd["key"], VersionId=cmd["version_id"])
        return {"ok": True}
    if op == "uploads":
        r = s3.list_multipart_uploads(Bucket=b)
        return {"uploads": [u["Key"] for u in r.get("Uploads", [])]}
    if op == "keys":
        r = s3.list_objects_v2(Bucket=b, Prefix=cmd.get("prefix", ""))
        return {"keys": [o["Key"] for o in r.get("Contents", [])]}
    raise ValueError(f"unknown op {op}")


if __name__ == "__main__":
    main()
