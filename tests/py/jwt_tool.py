"""Makes signing keys, a JWKS and access tokens for the front-door tests (PyJWT + cryptography).

Usage:
    jwt_tool.py keys DIR [KID_SUFFIX]   writes DIR/<kid>.pem for rsa-, ec-, ed- keys and
                                        prints the public JWKS (JSON) on stdout
    jwt_tool.py sign DIR KID ALG        reads the claims (JSON) on stdin, prints the token

ALG is RS256, ES256 or EdDSA (signed with DIR/KID.pem), or an attack: `none` (no
signature) or `HS256` (an HMAC keyed with KID's *public* key in PEM, the classic
algorithm-confusion forgery).
"""

import base64
import hashlib
import hmac
import json
import os
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def private_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def keys(directory: str, suffix: str) -> None:
    os.makedirs(directory, exist_ok=True)
    made = {
        f"rsa-{suffix}": (rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm, "RS256"),
        f"ec-{suffix}": (ec.generate_private_key(ec.SECP256R1()), ECAlgorithm, "ES256"),
        f"ed-{suffix}": (ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm, "EdDSA"),
    }
    jwks = []
    for kid, (key, algorithm, alg) in made.items():
        with open(os.path.join(directory, f"{kid}.pem"), "wb") as f:
            f.write(private_pem(key))
        jwk = json.loads(algorithm.to_jwk(key.public_key()))
        jwk.update({"kid": kid, "alg": alg, "use": "sig"})
        jwks.append(jwk)
    json.dump({"keys": jwks}, sys.stdout)


def sign(directory: str, kid: str, alg: str) -> None:
    claims = json.load(sys.stdin)
    with open(os.path.join(directory, f"{kid}.pem"), "rb") as f:
        pem = f.read()
    if alg in ("RS256", "ES256", "EdDSA"):
        print(jwt.encode(claims, pem, algorithm=alg, headers={"kid": kid}))
        return
    header = {"alg": alg, "typ": "JWT", "kid": kid}
    message = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    if alg == "none":
        print(message + ".")
    elif alg == "HS256":
        public = serialization.load_pem_private_key(pem, None).public_key()
        secret = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        mac = hmac.new(secret, message.encode(), hashlib.sha256).digest()
        print(message + "." + b64(mac))
    else:
        raise SystemExit(f"unknown alg {alg}")


if __name__ == "__main__":
    if sys.argv[1] == "keys":
        keys(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "1")
    elif sys.argv[1] == "sign":
        sign(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(__doc__)
