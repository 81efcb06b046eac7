#!/usr/bin/env python3
"""A real SAML 2.0 service provider (pysaml2) for Portvakt's identity-provider tests.

Two commands, both reading the IdP's metadata from a file and printing one JSON object:

  saml_sp.py consume --idp-metadata F --entity-id E --acs URL [--outstanding ID] [FILE]
      Reads a SAMLResponse (base64, as posted by the HTTP-POST binding) from FILE or stdin,
      validates it with pysaml2 (Saml2Client.parse_authn_request_response: signatures of
      the response and of the assertion, issuer, audience, recipient, times, InResponseTo)
      and prints {"name_id", "name_id_format", "name_qualifier", "sp_name_qualifier",
      "issuer", "in_response_to", "attributes": {name: [values]}, "ava": {...}}.
      A response pysaml2 refuses prints {"error": "..."} and exits 3.

  saml_sp.py authn-request --idp-metadata F --entity-id E --acs URL
                           --binding redirect|post [--key K --cert C] [--relay-state S]
      Makes an AuthnRequest for the IdP, signed when --key/--cert are given, and prints
      {"id", "url"} (HTTP-Redirect: the whole signed URL) or {"id", "saml_request",
      "destination"} (HTTP-POST: the base64 of the signed XML).

Install: pip install -r tests/peers/requirements.txt (pysaml2), apt-get install xmlsec1.
"""

import argparse
import base64
import json
import sys
import tempfile

try:
    from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
    from saml2.client import Saml2Client
    from saml2.config import SPConfig
    from saml2.xmldsig import SIG_RSA_SHA256, DIGEST_SHA256
except ImportError as e:  # the Rust tests turn this line into the install command
    print(json.dumps({"error": f"pysaml2 is not installed: {e}", "install": True}))
    sys.exit(4)


def client(args):
    sp = {
        "entityid": args.entity_id,
        "metadata": {"local": [args.idp_metadata]},
        "service": {
            "sp": {
                "endpoints": {
                    "assertion_consumer_service": [(args.acs, BINDING_HTTP_POST)],
                },
                "allow_unsolicited": True,
                # Both must be signed: Portvakt's docs promise it, so the peer insists on it.
                "want_response_signed": True,
                "want_assertions_signed": True,
                "authn_requests_signed": bool(getattr(args, "key", None)),
                "allow_unknown_attributes": True,
                "name_id_format": ["urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"],
            }
        },
        "xmlsec_binary": "/usr/bin/xmlsec1",
        "accepted_time_diff": 5,
    }
    if getattr(args, "key", None):
        sp["key_file"] = args.key
        sp["cert_file"] = args.cert
    conf = SPConfig()
    conf.load(sp)
    return Saml2Client(config=conf)


def consume(args):
    data = open(args.file).read() if args.file else sys.stdin.read()
    c = client(args)
    outstanding = {args.outstanding: "/"} if args.outstanding else None
    try:
        resp = c.parse_authn_request_response(data.strip(), BINDING_HTTP_POST, outstanding)
    except Exception as e:  # every refusal is a test result, not a crash
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        sys.exit(3)
    if resp is None:
        print(json.dumps({"error": "pysaml2 returned no response"}))
        sys.exit(3)
    assertion = resp.assertion
    name_id = assertion.subject.name_id
    attributes = {}
    for statement in assertion.attribute_statement:
        for attr in statement.attribute:
            attributes.setdefault(attr.name, []).extend(
                v.text for v in attr.attribute_value
            )
    print(
        json.dumps(
            {
                "name_id": name_id.text,
                "name_id_format": name_id.format,
                "name_qualifier": name_id.name_qualifier,
                "sp_name_qualifier": name_id.sp_name_qualifier,
                "issuer": assertion.issuer.text,
                "in_response_to": resp.in_response_to,
                "attributes": attributes,
                "ava": resp.ava,
                "response_signed": resp.response.signature is not None,
                "assertion_signed": assertion.signature is not None,
            }
        )
    )


def authn_request(args):
    c = client(args)
    idp = c.metadata.identity_providers()[0]
    sign = bool(args.key)
    if args.binding == "redirect":
        req_id, info = c.prepare_for_authenticate(
            entityid=idp,
            relay_state=args.relay_state,
            binding=BINDING_HTTP_REDIRECT,
            sign=sign,
            sigalg=SIG_RSA_SHA256 if sign else None,
        )
        url = dict(info["headers"])["Location"]
        print(json.dumps({"id": req_id, "url": url}))
    else:
        dest = c.metadata.single_sign_on_service(idp, BINDING_HTTP_POST)[0]["location"]
        req_id, xml = c.create_authn_request(
            dest,
            binding=BINDING_HTTP_POST,
            sign=sign,
            sign_alg=SIG_RSA_SHA256 if sign else None,
            digest_alg=DIGEST_SHA256 if sign else None,
        )
        print(
            json.dumps(
                {
                    "id": req_id,
                    "destination": dest,
                    "saml_request": base64.b64encode(str(xml).encode()).decode(),
                }
            )
        )


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("consume", "authn-request"):
        s = sub.add_parser(name)
        s.add_argument("--idp-metadata", required=True)
        s.add_argument("--entity-id", required=True)
        s.add_argument("--acs", required=True)
    sub.choices["consume"].add_argument("--outstanding")
    sub.choices["consume"].add_argument("file", nargs="?")
    ar = sub.choices["authn-request"]
    ar.add_argument("--binding", choices=["redirect", "post"], default="redirect")
    ar.add_argument("--key")
    ar.add_argument("--cert")
    ar.add_argument("--relay-state", default="")
    args = p.parse_args()
    # pysaml2 writes temporary files for xmlsec1; keep them out of the source tree.
    tempfile.tempdir = tempfile.mkdtemp(prefix="saml_sp_")
    if args.cmd == "consume":
        consume(args)
    else:
        authn_request(args)


if __name__ == "__main__":
    main()
