"""Who may call whom: caller matching (for time switches and the block list), the tenant's
inbound block list, caller ID presentation per extension, and classes of service.

Feature object kinds (all per tenant):
  numbering "default":      {"country": "DE", "outside_prefix": "", "national_prefix": "0",
                             "international_prefix": "00", "premium": ["0900", "0137"],
                             "emergency": ["112", "110"]}   (these are the defaults)
  block_list "inbound":     {"numbers": ["+4930666"], "prefixes": ["+4990"], "countries": ["XK"],
                             "anonymous": true}  -> refused with 603 Decline (caller blocked)
  caller_id "<ext>":        {"hide": true, "number": "+4930123"}  -> From anonymous + Privacy: id
                             (RFC 3323), or present one of the tenant's DIDs on external calls
  class_of_service "<name>":{"allow": ["internal", "local", "national"], "deny_numbers": ["0800*"],
                             "allow_numbers": ["+4930123"], "extensions": ["1001"]}
An extension in no class uses the class named "default", if any, else may dial anything.
Emergency numbers are always allowed. Number lists hold exact numbers or prefixes ending
in '*'. Numbers compare in E.164 (via ``phonenumbers``) when both sides can be read as one.
"""

from __future__ import annotations

import phonenumbers

from node.config_rules import ConfigError, extension_number
from node.ports import ConfigStore

NUMBERING, BLOCK_LIST, CALLER_ID, COS = "numbering", "block_list", "caller_id", "class_of_service"
CATEGORIES = ("internal", "local", "national", "international", "premium")
_NUMBERING_DEFAULTS = {
    "country": "", "outside_prefix": "", "national_prefix": "0", "international_prefix": "00",
    "premium": ["0900", "0137", "0190"], "emergency": ["112", "110", "911", "999"],
}


def _digits(value: object, what: str, star: bool = False) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be text, not {value!r}")
    v = value.strip().replace(" ", "")
    body = v[:-1] if star and v.endswith("*") else v
    if not body.removeprefix("+").isdigit() or len(body) > 20:
        raise ConfigError(f"{what} {value!r}: use digits, optionally a leading +" + (" and a trailing *" if star else ""))
    return v


def _list(doc: dict, key: str, what: str, star: bool = False) -> list[str]:
    v = doc.get(key, [])
    if not isinstance(v, list) or len(v) > 10_000:
        raise ConfigError(f"{what} {key} must be a list")
    return [_digits(x, f"{what} {key} entry", star) for x in v]


def _country(value: object, what: str) -> str:
    if not isinstance(value, str) or value.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(f"{what}: {value!r} is not an ISO 3166 country code known to phonenumbers (e.g. DE, GB, US)")
    return value.upper()


# ------------------------------------------------------------------ numbers


def e164(raw: str, region: str = "") -> str | None:
    """``raw`` as +E.164 if it can be read as a phone number (trunks send +44…, 0044…, 44…)."""
    raw = raw.strip()
    candidates = []
    if raw.startswith("+"):
        candidates.append((raw, None))
    elif raw.startswith("00"):
        candidates.append(("+" + raw[2:], None))
    elif raw.startswith("0") and region:
        candidates.append((raw, region))
    elif raw.isdigit():
        candidates.append(("+" + raw, None))
    for text, reg in candidates:
        try:
            n = phonenumbers.parse(text, reg)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_possible_number(n):
            return phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164)
    return None


def country_of(raw: str, region: str = "") -> str | None:
    n = e164(raw, region)
    if n is None:
        return None
    parsed = phonenumbers.parse(n)
    # numbers outside any allocated range (fiction ranges, new blocks) still have a country code
    return phonenumbers.region_code_for_number(parsed) or phonenumbers.region_code_for_country_code(parsed.country_code)


def _listed(raw: str, entries: list[str], region: str) -> bool:
    norm = e164(raw, region)
    for e in entries:
        if e.endswith("*"):
            p = e[:-1]
            if raw.startswith(p) or (norm and p.startswith("+") and norm.startswith(p)):
                return True
        elif raw == e or (norm is not None and e164(e, region) == norm):
            return True
    return False


async def numbering(config: ConfigStore, tenant_id: int) -> dict:
    return {**_NUMBERING_DEFAULTS, **(await config.get_object(tenant_id, NUMBERING, "default") or {})}


async def save_numbering(config: ConfigStore, tenant_id: int, doc: object) -> dict:
    if not isinstance(doc, dict) or set(doc) - set(_NUMBERING_DEFAULTS):
        raise ConfigError(f"numbering plan fields: {', '.join(_NUMBERING_DEFAULTS)}")
    out = dict(doc)
    if out.get("country"):
        out["country"] = _country(out["country"], "numbering country")
    for key in ("outside_prefix", "national_prefix", "international_prefix"):
        if key in out and out[key] != "":
            out[key] = _digits(out[key], f"numbering {key}")
    for key in ("premium", "emergency"):
        if key in out:
            out[key] = _list(out, key, "numbering")
    await config.put_object(tenant_id, NUMBERING, "default", out)
    return out


# ------------------------------------------------------------------ caller matching


def validate_caller_match(doc: object, what: str = "caller match") -> dict:
    if not isinstance(doc, dict) or not doc or set(doc) - {"numbers", "prefixes", "countries", "anonymous"}:
        raise ConfigError(f'{what}: use {{"numbers": [...], "prefixes": [...], "countries": ["DE"], "anonymous": true}}')
    out: dict = {}
    if "numbers" in doc:
        out["numbers"] = _list(doc, "numbers", what)
    if "prefixes" in doc:
        out["prefixes"] = [p.rstrip("*") for p in _list(doc, "prefixes", what, star=True)]
    if "countries" in doc:
        if not isinstance(doc["countries"], list):
            raise ConfigError(f"{what} countries must be a list such as [\"DE\", \"AT\"]")
        out["countries"] = [_country(c, f"{what} country") for c in doc["countries"]]
    if "anonymous" in doc:
        if not isinstance(doc["anonymous"], bool):
            raise ConfigError(f"{what} anonymous must be true or false")
        out["anonymous"] = doc["anonymous"]
    return out


def _is_anonymous(caller: str) -> bool:
    return not caller or not caller.removeprefix("+").isdigit()


def caller_matches_doc(doc: dict, caller: str, region: str = "") -> bool:
    """Does ``caller`` (the From user part) fit any of the criteria of ``doc``?"""
    if _is_anonymous(caller):
        return bool(doc.get("anonymous"))
    if _listed(caller, doc.get("numbers", []), region):
        return True
    if _listed(caller, [p + "*" for p in doc.get("prefixes", [])], region):
        return True
    if doc.get("countries"):
        return country_of(caller, region) in doc["countries"]
    return False


async def caller_matches(config: ConfigStore, tenant_id: int, doc: dict, caller: str) -> bool:
    return caller_matches_doc(doc, caller, (await numbering(config, tenant_id))["country"])


# ------------------------------------------------------------------ block list


async def save_block_list(config: ConfigStore, tenant_id: int, doc: object) -> dict:
    out = validate_caller_match(doc, "block list")
    await config.put_object(tenant_id, BLOCK_LIST, "inbound", out)
    return out


async def blocked(config: ConfigStore, tenant_id: int, caller: str) -> bool:
    doc = await config.get_object(tenant_id, BLOCK_LIST, "inbound")
    return bool(doc) and await caller_matches(config, tenant_id, doc, caller)


# ------------------------------------------------------------------ caller ID


async def save_caller_id(config: ConfigStore, tenant_id: int, ext: str, doc: object) -> dict:
    ext = extension_number(ext)
    if await config.get_extension(tenant_id, ext) is None:
        raise ConfigError(f"extension {ext} does not exist in this tenant", 404)
    if not isinstance(doc, dict) or set(doc) - {"hide", "number"}:
        raise ConfigError('caller ID settings: {"hide": true|false, "number": "<one of the tenant\'s DIDs>"}')
    out: dict = {"hide": doc.get("hide", False)}
    if not isinstance(out["hide"], bool):
        raise ConfigError("caller ID hide must be true or false")
    if doc.get("number"):
        number = _digits(doc["number"], "caller ID number")
        own = {d.number.removeprefix("+") for d in await config.list_dids(tenant_id)}
        if number.removeprefix("+") not in own:
            raise ConfigError(f"caller ID number {number} is not a DID of this tenant: an extension may only present the tenant's own numbers", 403)
        out["number"] = number
    await config.put_object(tenant_id, CALLER_ID, ext, out)
    return out


async def caller_id(config: ConfigStore, tenant_id: int, ext: str) -> dict:
    return await config.get_object(tenant_id, CALLER_ID, ext) or {}


# ------------------------------------------------------------------ classes of service


def validate_cos(doc: object) -> dict:
    if not isinstance(doc, dict) or set(doc) - {"allow", "allow_numbers", "deny_numbers", "extensions"}:
        raise ConfigError('a class of service: {"allow": [categories], "allow_numbers": [...], "deny_numbers": [...], "extensions": [...]}')
    allow = doc.get("allow", ["internal"])
    if not isinstance(allow, list) or any(a not in CATEGORIES for a in allow):
        raise ConfigError(f"class of service allow {allow!r}: a list of {', '.join(CATEGORIES)}")
    exts = doc.get("extensions", [])
    if not isinstance(exts, list):
        raise ConfigError("class of service extensions must be a list of extension numbers")
    return {
        "allow": list(dict.fromkeys(allow)),
        "allow_numbers": _list(doc, "allow_numbers", "class of service", star=True),
        "deny_numbers": _list(doc, "deny_numbers", "class of service", star=True),
        "extensions": [extension_number(e) for e in exts],
    }


async def save_cos(config: ConfigStore, tenant_id: int, name: str, doc: object) -> dict:
    out = validate_cos(doc)
    for e in out["extensions"]:
        if await config.get_extension(tenant_id, e) is None:
            raise ConfigError(f"class of service member {e} is not an extension of this tenant", 404)
    for other, odoc in (await config.list_objects(tenant_id, COS)).items():
        both = set(out["extensions"]) & set(odoc.get("extensions", []))
        if other != name and both:
            raise ConfigError(f"extension {', '.join(sorted(both))} is already in class of service {other!r}", 409)
    await config.put_object(tenant_id, COS, name, out)
    return out


def category(dialled: str, plan: dict) -> str:
    """What kind of call a dialled external number is, by the tenant's numbering plan."""
    n = dialled
    out_p = plan.get("outside_prefix") or ""
    if out_p and n.startswith(out_p):
        n = n[len(out_p):]
    if any(n.startswith(p) for p in plan.get("premium", [])):
        return "premium"
    intl = plan.get("international_prefix") or ""
    if n.startswith("+") or (intl and n.startswith(intl)):
        return "international"
    nat = plan.get("national_prefix") or ""
    if nat and n.startswith(nat):
        return "national"
    return "local"


def _strip_outside(dialled: str, plan: dict) -> str:
    p = plan.get("outside_prefix") or ""
    return dialled[len(p):] if p and dialled.startswith(p) else dialled


async def check_dial(config: ConfigStore, tenant_id: int, ext: str, dialled: str, internal: bool) -> str | None:
    """None when extension ``ext`` may dial ``dialled``, else the reason it may not."""
    classes = await config.list_objects(tenant_id, COS)
    cos_name = next((n for n, d in classes.items() if ext in d.get("extensions", [])), None)
    if cos_name is None and "default" in classes:
        cos_name = "default"
    if cos_name is None:
        return None
    cos = classes[cos_name]
    plan = await numbering(config, tenant_id)
    number = _strip_outside(dialled, plan)
    region = plan["country"]
    if not internal and (number in plan.get("emergency", []) or dialled in plan.get("emergency", [])):
        return None
    if _listed(number, cos.get("deny_numbers", []), region) or _listed(dialled, cos.get("deny_numbers", []), region):
        return f"number {dialled} is barred for extension {ext}"
    if _listed(number, cos.get("allow_numbers", []), region) or _listed(dialled, cos.get("allow_numbers", []), region):
        return None
    cat = "internal" if internal else category(dialled, plan)
    if cat not in cos.get("allow", []):
        return f"{cat} calls are not allowed for extension {ext} (class of service {cos_name})"
    return None
