"""What kube-apiserver does to a custom resource write, without a kube-apiserver.

No API server runs in the test environment, so this module replays, for an
``apiextensions.k8s.io/v1`` CustomResourceDefinition given as a plain dict, the
steps the server takes when a custom resource is created or updated:

1. decode: prune fields the schema does not know (reported as ``unknown field``
   warnings, or as a strict decoding error) and non-nullable ``null`` values
   that have no default;
2. apply structural ``default`` values (nested defaults only where the parent
   object is present);
3. with a ``status`` subresource, drop ``status`` on create and keep the old
   ``status`` on update (and the reverse for ``subresource="status"``);
4. validate against the version's ``openAPIV3Schema`` with kube-openapi's rules
   and messages, ratcheting unchanged values on update (CRDValidationRatcheting,
   on by default since Kubernetes 1.30);
5. check ``x-kubernetes-list-type`` ``set``/``map`` uniqueness;
6. evaluate every ``x-kubernetes-validations`` CEL rule with ``self`` and
   ``oldSelf`` (cel-python), unless step 4 found a "blocking" error, in which
   case the server skips CEL and says so.

Messages follow Kubernetes 1.35+ (``k8s.io/apimachinery`` ``field.Error``):
a failed rule on a string reads ``spec.x: Invalid value: "bad": <message>`` and
on an object or list ``spec: Invalid value: <message>`` (before 1.35 the server
printed the schema type, ``Invalid value: "string"``, instead of the value).

Public API: :func:`validate` (error messages), :func:`admit` (:class:`Admission`:
the stored object, errors and warnings), and the CRD-creation checks
:func:`cost_check` (CEL rules) and :func:`structural_check` (schema shape).
The CEL rules run on cel-python; see :data:`_FUNCTIONS` for what is added to it.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import ipaddress
import json
import math
import operator
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final, Literal

import celpy
import lark
import re2  # google-re2, installed with cel-python: RE2 semantics like the API server
from celpy import celtypes
from celpy.adapter import json_to_cel as _json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

Schema = Mapping[str, Any]
FieldValidation = Literal["Ignore", "Warn", "Strict"]

__all__ = [
    "Admission",
    "FieldError",
    "admit",
    "cel_escape",
    "cost_check",
    "go_float",
    "go_value",
    "structural_check",
    "validate",
]


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


MISSING: Final = _Sentinel("<missing>")  # no (correlated) old value at this path
_OMIT: Final = _Sentinel("<omitted>")  # field.OmitValueType: the message shows no value

_BLOCKED_CEL = (
    "some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)
_MAX_MESSAGE_EXPRESSION_BYTES: Final = 5 * 1024
_REASONS: Final = ("FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate")
_META_FIELDS: Final = ("apiVersion", "kind", "metadata")


# --------------------------------------------------------------------------- field errors


# k8s.io/apimachinery/pkg/util/validation/field ErrorType -> its String()
_ERROR_TYPES: Final = {
    "FieldValueInvalid": "Invalid value",
    "FieldValueTypeInvalid": "Invalid value",
    "FieldValueNotSupported": "Unsupported value",
    "FieldValueRequired": "Required value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueDuplicate": "Duplicate value",
    "FieldValueTooLong": "Too long",
    "FieldValueTooMany": "Too many",
    "InternalError": "Internal error",
}
_WITHOUT_VALUE: Final = frozenset({"FieldValueRequired", "FieldValueForbidden", "FieldValueTooLong", "InternalError"})
# strategy.go hasBlockingErr: any of these means CEL rules are not evaluated
_BLOCKING: Final = frozenset(
    {
        "FieldValueNotSupported",
        "FieldValueRequired",
        "FieldValueTooLong",
        "FieldValueTooMany",
        "FieldValueTypeInvalid",
    }
)


@dataclass(frozen=True)
class FieldError:
    """One ``field.Error``; ``str()`` renders it exactly like the API server."""

    type: str  # Go ErrorType, e.g. "FieldValueInvalid"
    path: str  # "" is the nil path, rendered "<nil>"
    value: Any = _OMIT
    detail: str = ""

    def __str__(self) -> str:
        body = _ERROR_TYPES[self.type]
        if self.type not in _WITHOUT_VALUE and self.value is not _OMIT:
            body += ": " + go_value(self.value)
        if self.detail:
            body += ": " + self.detail
        return f"{self.path or '<nil>'}: {body}"

    @property
    def blocking(self) -> bool:
        return self.type in _BLOCKING


def go_value(value: Any) -> str:
    """A bad value as ``field.Error.ErrorBody`` prints it (%q, %v or JSON)."""
    if value is None:
        return '"null"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def go_float(number: float) -> str:
    """Go's ``%v`` of a float64 (shortest digits, exponent from 1e+06 / below 1e-04)."""
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    if number == 0:
        return "0"
    normal = Decimal(repr(abs(number))).normalize()
    digits = "".join(str(d) for d in normal.as_tuple().digits)
    point = normal.adjusted()
    sign = "-" if number < 0 else ""
    if point < -4 or point >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if point < 0 else '+'}{abs(point):02d}"
    return sign + format(normal, "f")


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _index(path: str, index: int | str) -> str:
    return f"{path}[{index}]"


# --------------------------------------------------------------------------- schema access


def _props(schema: Schema | None) -> Mapping[str, Schema]:
    return (schema or {}).get("properties") or {}


def _additional(schema: Schema | None) -> Schema | None:
    extra = (schema or {}).get("additionalProperties")
    return extra if isinstance(extra, Mapping) else None


def _items(schema: Schema | None) -> Schema | None:
    items = (schema or {}).get("items")
    return items if isinstance(items, Mapping) else None


def _preserves_unknown(schema: Schema | None) -> bool:
    schema = schema or {}
    return schema.get("x-kubernetes-preserve-unknown-fields") is True or schema.get("additionalProperties") is True


def _embedded(schema: Schema | None) -> bool:
    return (schema or {}).get("x-kubernetes-embedded-resource") is True


def _has_default(schema: Schema | None) -> bool:
    return (schema or {}).get("default") is not None


def _expected_types(schema: Schema) -> list[str]:
    if schema.get("x-kubernetes-int-or-string"):
        return ["integer", "string"]
    kind = schema.get("type")
    return [kind] if kind else []


def _field_schema(schema: Schema | None, key: str) -> Schema | None:
    props = _props(schema)
    return props[key] if key in props else _additional(schema)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def _same(old: Any, new: Any) -> bool:
    """reflect.DeepEqual on decoded JSON (1 != 1.0 != True)."""
    if type(old) is not type(new):
        return False
    if isinstance(new, dict):
        return old.keys() == new.keys() and all(_same(old[k], v) for k, v in new.items())
    if isinstance(new, list):
        return len(old) == len(new) and all(_same(a, b) for a, b in zip(old, new, strict=True))
    return bool(old == new)


def _object_children(value: Mapping[str, Any], schema: Schema | None) -> Iterator[tuple[str, Any, Schema, bool]]:
    """(key, item, schema, is_property): declared properties in schema order, then map entries."""
    props, extra = _props(schema), _additional(schema)
    for key, sub in props.items():
        if key in value:
            yield key, value[key], sub, True
    if extra is not None:
        for key, item in value.items():
            if key not in props:
                yield key, item, extra, False


def _old_child(old: Any, key: str) -> Any:
    return old.get(key, MISSING) if isinstance(old, dict) else MISSING


def _map_key(item: Mapping[str, Any], keys: Sequence[str]) -> tuple[str, ...]:
    return tuple(json.dumps(item.get(k), sort_keys=True) for k in keys)


def _old_item(schema: Schema, old: Any, item: Any) -> Any:
    """The old element correlated with ``item``: only list-type=map lists correlate (by key)."""
    keys = schema.get("x-kubernetes-list-map-keys") or []
    if schema.get("x-kubernetes-list-type") != "map" or not keys or not isinstance(old, list):
        return MISSING
    if not isinstance(item, dict):
        return MISSING
    wanted = _map_key(item, keys)
    matches = [o for o in old if isinstance(o, dict) and _map_key(o, keys) == wanted]
    return matches[-1] if matches else MISSING


# --------------------------------------------------------------------------- public API


@dataclass
class Admission:
    """Outcome of one write: the object as it would be stored, errors and warnings."""

    object: dict[str, Any]
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return not self.errors


def validate(
    crd: Mapping[str, Any],
    obj: Mapping[str, Any],
    old: Mapping[str, Any] | None = None,
    version: str | None = None,
    *,
    subresource: Literal["status"] | None = None,
    ratcheting: bool = True,
    field_validation: FieldValidation = "Warn",
) -> list[str]:
    """The API server's error messages for creating ``obj`` (or updating ``old`` to it).

    An empty list means the write is admitted. See :func:`admit` for the options.
    """
    return admit(
        crd,
        obj,
        old,
        version,
        subresource=subresource,
        ratcheting=ratcheting,
        field_validation=field_validation,
    ).errors


def admit(
    crd: Mapping[str, Any],
    obj: Mapping[str, Any],
    old: Mapping[str, Any] | None = None,
    version: str | None = None,
    *,
    subresource: Literal["status"] | None = None,
    ratcheting: bool = True,
    field_validation: FieldValidation = "Warn",
) -> Admission:
    """Create (``old is None``) or update ``old`` -> ``obj`` as the API server would.

    ``version`` picks the CRD version (default: the one in ``obj["apiVersion"]``,
    else the storage version). ``subresource="status"`` writes through the status
    subresource. ``ratcheting=False`` disables CRDValidationRatcheting.
    ``field_validation`` is the request's fieldValidation: "Warn" (the server
    default), "Strict" (kubectl's default) or "Ignore".
    """
    entry = _version_entry(crd, obj, version)
    schema: Schema = entry["schema"]["openAPIV3Schema"]
    new, unknown = _decode(obj, schema)
    if unknown and field_validation == "Strict":
        detail = ", ".join(f'unknown field "{path}"' for path in unknown)
        kind = crd["spec"].get("names", {}).get("kind", "object")
        prefix = f'{kind} in version "{entry["name"]}" cannot be handled as a {kind}'
        return Admission(new, [f"{prefix}: strict decoding error: {detail}"])
    warnings = [f'unknown field "{path}"' for path in unknown] if field_validation == "Warn" else []
    stored_old = _decode(old, schema)[0] if old is not None else None
    has_status = "status" in (entry.get("subresources") or {})
    new = _apply_subresource(new, stored_old, has_status, subresource)
    errors = _validate_stored(new, stored_old, schema, ratcheting, warnings)
    return Admission(new, [str(e) for e in errors], warnings)


def _version_entry(crd: Mapping[str, Any], obj: Mapping[str, Any], version: str | None) -> Mapping[str, Any]:
    versions: list[Mapping[str, Any]] = list(crd["spec"]["versions"])
    api_version = str(obj.get("apiVersion", ""))
    wanted = version or (api_version.rpartition("/")[2] if "/" in api_version else None)
    if wanted is not None:
        for entry in versions:
            if entry["name"] == wanted:
                return entry
        raise ValueError(f"the CRD serves no version {wanted!r}")
    storage = [entry for entry in versions if entry.get("storage")]
    return (storage or versions)[0]


def _apply_subresource(
    new: dict[str, Any], old: dict[str, Any] | None, has_status: bool, subresource: str | None
) -> dict[str, Any]:
    """PrepareForCreate/PrepareForUpdate of the main resource and of the status subresource."""
    if subresource == "status":
        if old is None or not has_status:
            raise ValueError("a status subresource write needs an existing object and a status subresource")
        merged = copy.deepcopy(old)
        _move_status(new, merged)
        return merged
    if has_status:
        _move_status(old or {}, new)
    return new


def _move_status(source: Mapping[str, Any], target: dict[str, Any]) -> None:
    if "status" in source:
        target["status"] = copy.deepcopy(source["status"])
    else:
        target.pop("status", None)


def _validate_stored(
    new: dict[str, Any], old: dict[str, Any] | None, schema: Schema, ratcheting: bool, warnings: list[str]
) -> list[FieldError]:
    errors: list[FieldError] = []
    _validate_node(new, schema, "", old if ratcheting and old is not None else MISSING, errors)
    if old is None or not _list_type_errors(old, schema, ""):
        errors += _list_type_errors(new, schema, "")
    if not _has_rules(schema):
        return errors
    if any(error.blocking for error in errors):
        return [*errors, FieldError("FieldValueInvalid", "", None, _BLOCKED_CEL)]
    run = _CelRun(ratcheting=ratcheting, warnings=warnings)
    run.node(new, schema, "", MISSING if old is None else old, unchanged=False, resource_root=True)
    return errors + run.errors


def _has_rules(schema: Schema | None) -> bool:
    if not schema:
        return False
    if schema.get("x-kubernetes-validations"):
        return True
    children = [*_props(schema).values(), _items(schema), _additional(schema), *(schema.get("allOf") or [])]
    return any(_has_rules(child) for child in children)


# --------------------------------------------------------------------------- decoding


def _decode(obj: Mapping[str, Any], schema: Schema) -> tuple[dict[str, Any], list[str]]:
    """Prune unknown fields and non-nullable nulls, then apply defaults (on a copy)."""
    unknown: list[str] = []
    pruned = _prune_object(obj, schema, "", unknown, resource_root=True)
    _apply_defaults(pruned, schema)
    return pruned, unknown


def _prune(value: Any, schema: Schema | None, path: str, unknown: list[str]) -> Any:
    if schema is None:
        return copy.deepcopy(value)
    if isinstance(value, dict):
        return _prune_object(value, schema, path, unknown, resource_root=_embedded(schema))
    if isinstance(value, list):
        items = _items(schema)
        return [_prune(item, items, _index(path, i), unknown) for i, item in enumerate(value)]
    return value


def _prune_object(
    value: Mapping[str, Any], schema: Schema, path: str, unknown: list[str], *, resource_root: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        sub = _field_schema(schema, key)
        if resource_root and key in _META_FIELDS:
            out[key] = copy.deepcopy(item)  # ObjectMeta is coerced by the server, not pruned by the schema
            continue
        if sub is None:
            if _preserves_unknown(schema):
                out[key] = copy.deepcopy(item)
            else:
                unknown.append(_child(path, key))
            continue
        if item is None and not sub.get("nullable") and not _has_default(sub):
            continue  # PruneNonNullableNullsWithoutDefaults
        out[key] = _prune(item, sub, _child(path, key), unknown)
    return out


def _non_nullable_null(value: Any, schema: Schema) -> bool:
    return value is None and not schema.get("nullable") and _has_default(schema)


def _apply_defaults(value: Any, schema: Schema | None) -> None:
    """structuraldefaulting.Default: fill absent (or non-nullable null) properties, recursively."""
    if schema is None:
        return
    if isinstance(value, dict):
        for key, sub in _props(schema).items():
            if _has_default(sub) and (key not in value or _non_nullable_null(value[key], sub)):
                value[key] = copy.deepcopy(sub["default"])
        for key in list(value):
            key_schema = _field_schema(schema, key)
            if key_schema is not None and _non_nullable_null(value[key], key_schema):
                value[key] = copy.deepcopy(key_schema["default"])
            _apply_defaults(value[key], key_schema)
    elif isinstance(value, list):
        items = _items(schema)
        for i, item in enumerate(value):
            if items is not None and _non_nullable_null(item, items):
                value[i] = copy.deepcopy(items["default"])
            _apply_defaults(value[i], items)


# --------------------------------------------------------------------------- OpenAPI schema validation


def _validate_node(value: Any, schema: Schema | None, path: str, old: Any, out: list[FieldError]) -> None:
    """kube-openapi's SchemaValidator at one node; ``old`` is MISSING or the correlated old value."""
    if schema is None or (old is not MISSING and _same(old, value)):
        return  # ratcheting: an unchanged value is not validated again
    if value is None:
        types = _expected_types(schema)
        if types and not schema.get("nullable"):
            out.append(_type_error(path, types, "null"))
        return
    if not _check_type(value, schema, path, out):
        _check_enum(value, schema, path, out)
        return
    _check_composition(value, schema, path, out)
    if isinstance(value, str):
        _check_string(value, schema, path, out)
    elif _is_number(value):
        _check_number(value, schema, path, out)
    elif isinstance(value, list):
        _check_array(value, schema, path, old, out)
    _check_enum(value, schema, path, out)
    if isinstance(value, dict):
        _check_object(value, schema, path, old, out)


def _type_error(path: str, types: list[str], actual: str) -> FieldError:
    detail = f"{path} in body must be of type {','.join(types)}: {json.dumps(actual)}"
    return FieldError("FieldValueTypeInvalid", path, actual, detail)


def _check_type(value: Any, schema: Schema, path: str, out: list[FieldError]) -> bool:
    types = _expected_types(schema)
    actual = _json_type(value)
    integral_float = actual == "number" and float(value).is_integer()
    ok = (
        not types
        or actual in types
        or (actual == "integer" and "number" in types)
        or (integral_float and "integer" in types)
    )
    if not ok:
        out.append(_type_error(path, types, actual))
    return ok


def _check_enum(value: Any, schema: Schema, path: str, out: list[FieldError]) -> None:
    allowed = schema.get("enum")
    if allowed is None or any(_enum_equal(value, candidate) for candidate in allowed):
        return
    names = [c if isinstance(c, str) else json.dumps(c, separators=(",", ":")) for c in allowed]
    detail = "supported values: " + ", ".join(json.dumps(n, ensure_ascii=False) for n in names)
    out.append(FieldError("FieldValueNotSupported", path, value, detail))


def _enum_equal(value: Any, candidate: Any) -> bool:
    if _is_number(value) and _is_number(candidate):
        return bool(value == candidate)
    return _same(value, candidate)


def _check_composition(value: Any, schema: Schema, path: str, out: list[FieldError]) -> None:
    for sub in schema.get("allOf") or []:
        _validate_node(value, sub, path, MISSING, out)
    any_of = schema.get("anyOf")
    if any_of and not any(_passes(value, sub, path) for sub in any_of):
        out.append(FieldError("FieldValueInvalid", "", "", f'"{path}" must validate at least one schema (anyOf)'))
    one_of = schema.get("oneOf")
    if one_of and (valid := sum(_passes(value, sub, path) for sub in one_of)) != 1:
        found = "Found none valid" if valid == 0 else f"Found {valid} valid alternatives"
        detail = f'"{path}" must validate one and only one schema (oneOf). {found}'
        out.append(FieldError("FieldValueInvalid", "", "", detail))
    negated = schema.get("not")
    if isinstance(negated, Mapping) and _passes(value, negated, path):
        out.append(FieldError("FieldValueInvalid", "", "", f'"{path}" must not validate the schema (not)'))


def _passes(value: Any, schema: Schema, path: str) -> bool:
    errors: list[FieldError] = []
    _validate_node(value, schema, path, MISSING, errors)
    return not errors


def _check_string(value: str, schema: Schema, path: str, out: list[FieldError]) -> None:
    length = len(value)  # runes, like utf8.RuneCountInString
    if "maxLength" in schema and length > schema["maxLength"]:
        limit = schema["maxLength"]
        unit = "byte" if limit == 1 else "bytes"
        out.append(FieldError("FieldValueTooLong", path, detail=f"may not be more than {limit} {unit}"))
    if "minLength" in schema and length < schema["minLength"]:
        detail = f"{path} in body should be at least {schema['minLength']} chars long"
        out.append(FieldError("FieldValueInvalid", path, value, detail))
    pattern = schema.get("pattern")
    if pattern is not None and not _re_search(pattern, value):
        out.append(FieldError("FieldValueInvalid", path, value, f"{path} in body should match '{pattern}'"))
    check = _FORMATS.get(schema.get("format", ""))
    if check is not None and not check(value):
        detail = f"{path} in body must be of type {schema['format']}: {json.dumps(value, ensure_ascii=False)}"
        out.append(FieldError("FieldValueTypeInvalid", path, value, detail))


def _check_number(value: float, schema: Schema, path: str, out: list[FieldError]) -> None:
    factor = schema.get("multipleOf")
    if factor and not float(value / factor).is_integer():
        detail = f"{path} in body should be a multiple of {_limit(factor, value)}"
        out.append(FieldError("FieldValueInvalid", path, value, detail))
    maximum, minimum = schema.get("maximum"), schema.get("minimum")
    exclusive_max, exclusive_min = (
        schema.get("exclusiveMaximum") is True,
        schema.get("exclusiveMinimum") is True,
    )
    if maximum is not None and (value > maximum or (exclusive_max and value == maximum)):
        out.append(_bound_error(value, maximum, exclusive_max, "less than", path))
    if minimum is not None and (value < minimum or (exclusive_min and value == minimum)):
        out.append(_bound_error(value, minimum, exclusive_min, "greater than", path))


def _bound_error(value: float, bound: float, exclusive: bool, word: str, path: str) -> FieldError:
    relation = word if exclusive else f"{word} or equal to"
    return FieldError("FieldValueInvalid", path, value, f"{path} in body should be {relation} {_limit(bound, value)}")


def _limit(bound: float, value: float) -> str:
    if isinstance(value, int) and float(bound).is_integer():
        return str(int(bound))  # the *Int variants of the kube-openapi errors
    return go_float(float(bound))


def _check_array(value: list[Any], schema: Schema, path: str, old: Any, out: list[FieldError]) -> None:
    items = _items(schema)
    for i, item in enumerate(value):
        _validate_node(item, items, _index(path, i), _old_item(schema, old, item), out)
    if "minItems" in schema and len(value) < schema["minItems"]:
        detail = f"{path} in body should have at least {schema['minItems']} items"
        out.append(FieldError("FieldValueInvalid", path, len(value), detail))
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        out.append(FieldError("FieldValueTooMany", path, len(value), _at_most(schema["maxItems"])))


def _at_most(limit: int) -> str:
    return f"must have at most {limit} {'item' if limit == 1 else 'items'}"


def _check_object(value: dict[str, Any], schema: Schema, path: str, old: Any, out: list[FieldError]) -> None:
    count = len(value)
    if "minProperties" in schema and count < schema["minProperties"]:
        detail = f"{path} in body should have at least {schema['minProperties']} properties"
        out.append(FieldError("FieldValueInvalid", path, count, detail))
        return
    if "maxProperties" in schema and count > schema["maxProperties"]:
        out.append(FieldError("FieldValueTooMany", path, count, _at_most(schema["maxProperties"])))
        return
    for key, item, sub, _is_property in _object_children(value, schema):
        _validate_node(item, sub, _child(path, key), _old_child(old, key), out)
    for key in schema.get("required") or []:
        if key not in value:
            out.append(FieldError("FieldValueRequired", _child(path, key)))


@lru_cache(maxsize=256)
def _compiled_regex(pattern: str) -> Any:
    return re2.compile(pattern)


def _re_search(pattern: str, text: str) -> bool:
    return _compiled_regex(pattern).search(text) is not None


_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_GO_DURATION = re.compile(r"^[-+]?(0|((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+)$")
_WORDY_DURATION = re.compile(r"^\s*(?:\d+\s*[A-Za-zµ]+\s*)+$")
_IPV4 = re.compile(r"^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$")


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _is_ipv6(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


_FORMATS: Final[dict[str, Callable[[str], bool]]] = {
    "date-time": lambda s: _DATE_TIME.match(s) is not None,
    "date": lambda s: _DATE.match(s) is not None,
    "uuid": lambda s: _UUID.match(s) is not None,
    "byte": _is_base64,
    "duration": lambda s: _GO_DURATION.match(s) is not None or _WORDY_DURATION.match(s) is not None,
    "ipv4": lambda s: _IPV4.match(s) is not None,
    "ipv6": _is_ipv6,
}


# --------------------------------------------------------------------------- list-type set/map


def _list_type_errors(value: Any, schema: Schema | None, path: str) -> list[FieldError]:
    """structurallisttype.ValidateListSetsAndMaps."""
    if schema is None:
        return []
    errors: list[FieldError] = []
    if isinstance(value, list):
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "set":
            errors += _set_duplicates(value, path)
        elif list_type == "map":
            errors += _map_duplicates(value, schema.get("x-kubernetes-list-map-keys") or [], path)
        for i, item in enumerate(value):
            errors += _list_type_errors(item, _items(schema), _index(path, i))
    elif isinstance(value, dict):
        for key, item, sub, is_property in _object_children(value, schema):
            errors += _list_type_errors(item, sub, _child(path, key) if is_property else _index(path, key))
    return errors


def _set_duplicates(value: list[Any], path: str) -> list[FieldError]:
    seen: dict[str, int] = {}
    errors = []
    for i, item in enumerate(value):
        token = json.dumps(item, sort_keys=True)
        seen[token] = seen.get(token, 0) + 1
        if seen[token] == 2:
            errors.append(FieldError("FieldValueDuplicate", _index(path, i), item))
    return errors


def _map_duplicates(value: list[Any], keys: Sequence[str], path: str) -> list[FieldError]:
    errors = []
    seen: set[tuple[str, ...]] = set()
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            if item is not None:
                detail = "must be an object for an array of list-type map"
                errors.append(FieldError("FieldValueInvalid", _index(path, i), item, detail))
            continue
        key = _map_key(item, keys)
        if key in seen:
            errors.append(FieldError("FieldValueDuplicate", _index(path, i), {k: item.get(k) for k in keys}))
        seen.add(key)
    return errors


# --------------------------------------------------------------------------- CEL: values


_CEL_RESERVED: Final = frozenset(
    {
        *("true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function"),
        *("if", "import", "let", "loop", "package", "namespace", "return", "var", "void", "while"),
    }
)
_ESCAPES: Final = {"__": "__underscores__", ".": "__dot__", "-": "__dash__", "/": "__slash__"}
_ESCAPE_TOKEN = re.compile(r"__|[-./]|[^a-zA-Z0-9_]")


def cel_escape(name: str) -> str | None:
    """How a property name appears in CEL (``x-y`` is ``self.x__dash__y``); None if unreachable."""
    if not name or name[0].isdigit():
        return None
    if name in _CEL_RESERVED:
        return f"__{name}__"
    if any(token not in _ESCAPES for token in _ESCAPE_TOKEN.findall(name)):
        return None
    return _ESCAPE_TOKEN.sub(lambda m: _ESCAPES[m.group(0)], name)


def _to_cel(value: Any, schema: Schema | None, resource_root: bool = False) -> Any:
    """The CEL value the server binds for ``value`` under ``schema`` (UnstructuredToVal)."""
    if value is None:
        return None
    if schema is None or schema.get("x-kubernetes-int-or-string"):
        return _json_to_cel(value)
    kind = schema.get("type")
    if isinstance(value, dict):
        return _object_to_cel(value, schema, resource_root)
    if isinstance(value, list):
        return celtypes.ListType([_to_cel(item, _items(schema)) for item in value])
    if kind == "integer" and _is_number(value):
        return celtypes.IntType(int(value))
    if kind == "number" and _is_number(value):
        return celtypes.DoubleType(float(value))
    if kind == "string" and isinstance(value, str):
        return _string_to_cel(value, schema.get("format"))
    return _json_to_cel(value)


def _object_to_cel(value: Mapping[str, Any], schema: Schema, resource_root: bool) -> celtypes.MapType:
    props, extra = _props(schema), _additional(schema)
    out: dict[Any, Any] = {}
    for key, item in value.items():
        if key in props:
            name = cel_escape(key)
            if name is not None:
                out[celtypes.StringType(name)] = _to_cel(item, props[key], _embedded(props[key]))
        elif extra is not None:
            out[celtypes.StringType(key)] = _to_cel(item, extra, _embedded(extra))
        elif resource_root and key in _META_FIELDS:
            out[celtypes.StringType(key)] = _meta_to_cel(key, item)
        elif _preserves_unknown(schema):
            out[celtypes.StringType(key)] = _json_to_cel(item)
    if resource_root and isinstance(value.get("metadata"), dict):
        out[celtypes.StringType("metadata")] = _meta_to_cel("metadata", value["metadata"])
    return celtypes.MapType(out)


def _meta_to_cel(key: str, value: Any) -> Any:
    """Resource roots expose apiVersion, kind and metadata.{name,generateName} only."""
    if key != "metadata" or not isinstance(value, dict):
        return _json_to_cel(value)
    kept = {k: value[k] for k in ("name", "generateName") if isinstance(value.get(k), str)}
    return _json_to_cel(kept)


def _string_to_cel(value: str, fmt: str | None) -> Any:
    try:
        if fmt == "byte":
            return celtypes.BytesType(base64.b64decode(value, validate=True))
        if fmt == "duration":
            return celtypes.DurationType(value)
        if fmt == "date-time":
            return celtypes.TimestampType(value)
    except (ValueError, TypeError, OverflowError, binascii.Error):
        pass  # the schema validation reports the malformed value
    return celtypes.StringType(value)


# --------------------------------------------------------------------------- CEL: optionals and extensions


class _Optional:
    """cel-go's optional_type, as bound to ``oldSelf`` by ``optionalOldSelf: true``."""

    def __init__(self, value: Any = None, present: bool = False) -> None:
        self.value, self.present = value, present

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Optional) and (self.present, self.value) == (other.present, other.value)

    def __hash__(self) -> int:
        return hash(self.present)

    def __repr__(self) -> str:
        return f"optional.of({self.value!r})" if self.present else "optional.none()"


class _OptionalNamespace:
    """Bound to the name ``optional`` so that ``optional.of(x)``/``optional.none()`` resolve."""


def _optional(value: Any) -> _Optional:
    if not isinstance(value, _Optional):
        raise TypeError(f"no such overload: {type(value).__name__} is not an optional")
    return value


def _has_value(opt: Any) -> celtypes.BoolType:
    return celtypes.BoolType(_optional(opt).present)


def _opt_value(opt: Any) -> Any:
    opt = _optional(opt)
    if not opt.present:
        raise ValueError("optional.none() dereference")
    return opt.value


def _or_value(opt: Any, default: Any) -> Any:
    opt = _optional(opt)
    return opt.value if opt.present else default


def _optional_of(_namespace: Any, value: Any) -> _Optional:
    return _Optional(value, True)


def _optional_none(_namespace: Any) -> _Optional:
    return _Optional()


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("no such overload")
    return value


def _lower_ascii(text: Any) -> celtypes.StringType:
    return celtypes.StringType("".join(c.lower() if c.isascii() else c for c in _text(text)))


def _upper_ascii(text: Any) -> celtypes.StringType:
    return celtypes.StringType("".join(c.upper() if c.isascii() else c for c in _text(text)))


def _trim(text: Any) -> celtypes.StringType:
    return celtypes.StringType(_text(text).strip())


def _replace(text: Any, old: Any, new: Any, limit: Any = -1) -> celtypes.StringType:
    return celtypes.StringType(_text(text).replace(_text(old), _text(new), int(limit)))


def _split(text: Any, separator: Any, limit: Any = -1) -> celtypes.ListType:
    if int(limit) == 0:
        return celtypes.ListType([])
    parts = _text(text).split(_text(separator), int(limit) - 1 if int(limit) > 0 else -1)
    return celtypes.ListType([celtypes.StringType(p) for p in parts])


def _join(items: Any, separator: Any = "") -> celtypes.StringType:
    return celtypes.StringType(_text(separator).join(_text(item) for item in items))


def _substring(text: Any, start: Any, end: Any = None) -> celtypes.StringType:
    text = _text(text)
    stop = len(text) if end is None else int(end)
    if not 0 <= int(start) <= stop <= len(text):
        raise IndexError(f"index out of range: {start}..{stop}")
    return celtypes.StringType(text[int(start) : stop])


def _char_at(text: Any, index: Any) -> celtypes.StringType:
    text = _text(text)
    if not 0 <= int(index) <= len(text):
        raise IndexError(f"index out of range: {index}")
    return celtypes.StringType(text[int(index) : int(index) + 1])


def _index_of(container: Any, item: Any, start: Any = 0) -> celtypes.IntType:
    if isinstance(container, str):
        return celtypes.IntType(container.find(_text(item), int(start)))
    found = [i for i, x in enumerate(container) if i >= int(start) and x == item]
    return celtypes.IntType(found[0] if found else -1)


def _last_index_of(container: Any, item: Any) -> celtypes.IntType:
    if isinstance(container, str):
        return celtypes.IntType(container.rfind(_text(item)))
    found = [i for i, x in enumerate(container) if x == item]
    return celtypes.IntType(found[-1] if found else -1)


def _is_sorted(items: Any) -> celtypes.BoolType:
    return celtypes.BoolType(all(a <= b for a, b in zip(items, list(items)[1:], strict=False)))


def _sum(items: Any) -> Any:
    values = list(items)
    return functools.reduce(operator.add, values) if values else celtypes.IntType(0)


def _min(items: Any) -> Any:
    if not items:
        raise ValueError("min called on empty list")
    return min(items)


def _max(items: Any) -> Any:
    if not items:
        raise ValueError("max called on empty list")
    return max(items)


def _find(text: Any, pattern: Any) -> celtypes.StringType:
    match = _compiled_regex(_text(pattern)).search(_text(text))
    return celtypes.StringType(match.group(0) if match else "")


def _find_all(text: Any, pattern: Any, limit: Any = -1) -> celtypes.ListType:
    found = [m.group(0) for m in _compiled_regex(_text(pattern)).finditer(_text(text))]
    found = found if int(limit) < 0 else found[: int(limit)]
    return celtypes.ListType([celtypes.StringType(f) for f in found])


def _cel_kind(value: Any) -> str:
    if isinstance(value, celtypes.BoolType | bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str | bytes):
        return "string" if isinstance(value, str) else "bytes"
    if isinstance(value, list | dict):
        return "list" if isinstance(value, list) else "map"
    return type(value).__name__


def _cel_equal(left: Any, right: Any) -> bool:
    """cel-go's heterogeneous equality: 1 == 1.0, and values of different types are unequal."""
    if _cel_kind(left) != _cel_kind(right):
        return False
    if isinstance(left, list):
        return len(left) == len(right) and all(_cel_equal(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, dict):
        return len(left) == len(right) and all(
            any(_cel_equal(key, other) and _cel_equal(item, right[other]) for other in right)
            for key, item in left.items()
        )
    return bool(left == right)


def _first_error(*values: Any) -> CELEvalError | None:
    """celpy hands operators their operands' errors; the operators must pass them on."""
    return next((v for v in values if isinstance(v, CELEvalError)), None)


def _equals(left: Any, right: Any) -> Any:
    error = _first_error(left, right)
    return celtypes.BoolType(_cel_equal(left, right)) if error is None else error


def _not_equals(left: Any, right: Any) -> Any:
    error = _first_error(left, right)
    return celtypes.BoolType(not _cel_equal(left, right)) if error is None else error


def _contained_in(item: Any, container: Any) -> Any:
    error = _first_error(item, container)
    if error is not None:
        return error
    if not isinstance(container, list | dict):
        raise TypeError("no such overload")
    return celtypes.BoolType(any(_cel_equal(item, candidate) for candidate in container))


_FUNCTIONS: Final[dict[str, Callable[..., Any]]] = {
    "_==_": _equals,
    "_!=_": _not_equals,
    "_in_": _contained_in,
    # optionals (optionalOldSelf)
    "hasValue": _has_value,
    "value": _opt_value,
    "orValue": _or_value,
    "of": _optional_of,
    "none": _optional_none,
    # cel-go strings extension, as enabled in the API server
    "lowerAscii": _lower_ascii,
    "upperAscii": _upper_ascii,
    "trim": _trim,
    "replace": _replace,
    "split": _split,
    "join": _join,
    "substring": _substring,
    "charAt": _char_at,
    "indexOf": _index_of,
    "lastIndexOf": _last_index_of,
    # Kubernetes list and regex libraries
    "isSorted": _is_sorted,
    "sum": _sum,
    "min": _min,
    "max": _max,
    "find": _find,
    "findAll": _find_all,
}


# --------------------------------------------------------------------------- CEL: compile and evaluate

_ENV: Final = celpy.Environment()


@lru_cache(maxsize=1024)
def _parse(text: str) -> lark.Tree[Any] | str:
    """The AST of a CEL expression, or a cel-go style compile error."""
    try:
        return _ENV.compile(text)
    except CELParseError as exc:
        line, column = getattr(exc, "line", None), getattr(exc, "column", None)
        return f"ERROR: <input>:{line}:{column}: Syntax error"


@lru_cache(maxsize=1024)
def _program(text: str) -> celpy.Runner | str:
    tree = _parse(text)
    if isinstance(tree, str):
        return tree
    return _ENV.program(tree, functions=_FUNCTIONS)


@lru_cache(maxsize=1024)
def _uses_old_self(text: str) -> bool:
    tree = _parse(text)
    return not isinstance(tree, str) and any(
        node.data == "ident" and str(node.children[0]) == "oldSelf" for node in tree.iter_subtrees()
    )


def _evaluate(text: str, activation: dict[str, Any]) -> tuple[Any, str | None]:
    program = _program(text)
    if isinstance(program, str):
        return None, f"compilation failed: {program}"
    try:
        result = program.evaluate(activation)
    except CELEvalError as exc:
        return None, _cel_error_text(exc)
    if isinstance(result, CELEvalError):
        return None, _cel_error_text(result)
    return result, None


def _cel_error_text(exc: CELEvalError) -> str:
    """cel-go's wording for the runtime errors celpy reports."""
    args = [*exc.args, None, None, None]
    message, cause, cause_args = str(args[0]), args[1], args[2]
    if message.startswith("no such member in mapping: "):
        return "no such key: " + message.split(": ", 1)[1].strip("'")
    if message == "no such key":
        return f"no such key: {cause_args[0] if cause_args else ''}"
    if "no matching overload" in message or message.startswith("no such overload"):
        return "no such overload"
    if "does not support field selection" in message:
        return "no such overload"
    if message == "modulus or divide by zero":
        return "division by zero" if "division" in str(cause_args) else "modulus by zero"
    if message == "return error for overflow":
        detail = str(cause_args[0]) if cause_args else "overflow"
        return "integer overflow" if detail == "overflow" else detail
    if cause is IndexError:
        return "index out of range"
    if message == "match error":
        return f"error parsing regexp: {cause_args[0]!r}" if cause_args else "error parsing regexp"
    return message.split(" (in activation", 1)[0]


# --------------------------------------------------------------------------- CEL: the validator walk


@dataclass
class _CelRun:
    """One evaluation of all x-kubernetes-validations rules over an object (cel.Validator)."""

    ratcheting: bool
    warnings: list[str]
    errors: list[FieldError] = field(default_factory=list)

    def node(
        self, value: Any, schema: Schema | None, path: str, old: Any, *, unchanged: bool, resource_root: bool
    ) -> None:
        if value is None or schema is None:
            return  # rules only see non-null values; absent nodes are never visited
        if old is None:
            old = MISSING
        if self.ratcheting and old is not MISSING:
            unchanged = _same(old, value)  # else: the nearest correlatable parent decides
        rule_sets = [schema, *(schema.get("allOf") or [])]
        for holder in rule_sets:
            for rule in holder.get("x-kubernetes-validations") or []:
                self.rule(rule, value, schema, path, old, unchanged=unchanged, resource_root=resource_root)
        if isinstance(value, dict):
            self._children_of_object(value, schema, path, old, unchanged)
        elif isinstance(value, list):
            items = _items(schema)
            for i, item in enumerate(value):
                item_old = _old_item(schema, old, item)
                self.node(
                    item,
                    items,
                    _index(path, i),
                    item_old,
                    unchanged=unchanged,
                    resource_root=_embedded(items),
                )

    def _children_of_object(self, value: dict[str, Any], schema: Schema, path: str, old: Any, unchanged: bool) -> None:
        for key, item, sub, is_property in _object_children(value, schema):
            sub_path = _child(path, key) if is_property else _index(path, key)
            self.node(item, sub, sub_path, _old_child(old, key), unchanged=unchanged, resource_root=_embedded(sub))

    def rule(
        self,
        rule: Mapping[str, Any],
        value: Any,
        schema: Schema,
        path: str,
        old: Any,
        *,
        unchanged: bool,
        resource_root: bool,
    ) -> None:
        text = str(rule.get("rule", ""))
        schema_type = "object" if resource_root else str(schema.get("type", ""))
        uses_old = _uses_old_self(text)
        optional_old = rule.get("optionalOldSelf") is True
        if uses_old and old is MISSING and not optional_old:
            return  # transition rules run only when there is an old value to compare with
        activation = self._activation(value, schema, old, resource_root, uses_old)
        rule_activation = dict(activation)
        if uses_old and optional_old:
            rule_activation["oldSelf"] = _Optional(activation.get("oldSelf"), old is not MISSING)
        result, error = _evaluate(text, rule_activation)
        if error is None and not isinstance(result, celtypes.BoolType):
            error = f"compilation failed: rule must evaluate to a bool, got {type(result).__name__}"
        if error is not None:
            self.errors.append(FieldError("FieldValueInvalid", path, schema_type, _runtime_detail(error, rule)))
            return
        if result:
            return
        relative = _rule_field_path(rule, schema) if rule.get("fieldPath") else ""
        error_path = _child(path, relative) if relative else path
        bad_value = _OMIT if schema_type in ("object", "array") else value
        failure = _error_for_reason(rule.get("reason"), error_path, bad_value, _rule_message(rule, activation))
        if not uses_old and unchanged:
            self.warnings.append(str(failure))  # ratcheted: the value did not change
        else:
            self.errors.append(failure)

    @staticmethod
    def _activation(value: Any, schema: Schema, old: Any, resource_root: bool, uses_old: bool) -> dict[str, Any]:
        activation: dict[str, Any] = {
            "self": _to_cel(value, schema, resource_root),
            "optional": _OptionalNamespace(),
        }
        if uses_old and old is not MISSING:
            activation["oldSelf"] = _to_cel(old, schema, resource_root)
        return activation


def _rule_error_string(rule: Mapping[str, Any]) -> str:
    return str(rule.get("message") or rule.get("rule", "")).strip()


def _runtime_detail(error: str, rule: Mapping[str, Any]) -> str:
    if error.startswith("compilation failed"):
        return f"rule compile error: {error}"
    if error.startswith("no such overload"):
        return (
            f"'{error}': call arguments did not match a supported operator, function or macro signature "
            f"for rule: {_rule_error_string(rule)}"
        )
    return f"{error} evaluating rule: {_rule_error_string(rule)}"


def _rule_message(rule: Mapping[str, Any], activation: dict[str, Any]) -> str:
    expression = rule.get("messageExpression")
    if expression:
        result, error = _evaluate(str(expression), activation)
        if error is None and isinstance(result, str):
            text = result.strip()
            if text and "\n" not in text and len(text.encode()) <= _MAX_MESSAGE_EXPRESSION_BYTES:
                return text
    message = str(rule.get("message") or "").strip()
    return message or f"failed rule: {_rule_error_string(rule)}"


def _error_for_reason(reason: Any, path: str, value: Any, detail: str) -> FieldError:
    if reason == "FieldValueForbidden":
        return FieldError("FieldValueForbidden", path, detail=detail)
    if reason == "FieldValueRequired":
        return FieldError("FieldValueRequired", path, detail=detail)
    if reason == "FieldValueDuplicate":
        return FieldError("FieldValueDuplicate", path, value)
    return FieldError("FieldValueInvalid", path, value, detail)


_FIELD_PATH_TOKEN = re.compile(r"\.([^.\[\]]+)|\['((?:[^'\\]|\\.)*)'\]")


def _field_path_parts(field_path: str) -> Iterator[tuple[str, bool]]:
    """(name, bracketed) pairs of a rule's fieldPath; ValueError if it is malformed."""
    position = 0
    while position < len(field_path):
        match = _FIELD_PATH_TOKEN.match(field_path, position)
        if match is None:
            raise ValueError(f"expected [ or . but got: {field_path[position:]}")
        dotted, quoted = match.groups()
        yield (dotted, False) if dotted is not None else (re.sub(r"\\(.)", r"\1", quoted), True)
        position = match.end()


def _resolve_field_path(field_path: str, schema: Schema) -> tuple[str, Schema]:
    """cel.ValidFieldPath: the normalized relative path and the schema it reaches."""
    path, node = "", schema
    for name, _bracketed in _field_path_parts(field_path):
        if name in _props(node):
            path, node = _child(path, name), _props(node)[name]
        elif not _props(node) and _additional(node) is not None:
            path, node = _index(path, name), _additional(node) or {}
        else:
            raise ValueError("does not refer to a valid field")
    return path, node


def _rule_field_path(rule: Mapping[str, Any], schema: Schema) -> str:
    try:
        return _resolve_field_path(str(rule["fieldPath"]), schema)[0]
    except ValueError:
        return ""  # the server would have rejected the CRD; cost_check reports it


# --------------------------------------------------------------------------- cost_check


_PASS_THROUGH: Final = frozenset(
    {
        "expr",
        "conditionalor",
        "conditionaland",
        "relation",
        "addition",
        "multiplication",
        "unary",
        "member",
        "primary",
        "paren_expr",
    }
)
_MACROS: Final = frozenset({"all", "exists", "exists_one", "map", "filter"})
_STRING_SCANS: Final = frozenset({"matches", "size"})
_SCALAR_TYPES: Final = frozenset({"string", "integer", "number", "boolean"})
_META_SCHEMA: Final[Schema] = {
    "apiVersion": {"type": "string"},
    "kind": {"type": "string"},
    "metadata": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "generateName": {"type": "string"}},
    },
}


def _cel_view(schema: Schema, resource_root: bool) -> Schema:
    """The schema as CEL sees it: resource roots gain apiVersion, kind and metadata."""
    if not resource_root:
        return schema
    return {**schema, "type": "object", "properties": {**_props(schema), **_META_SCHEMA}}


def _unwrap(tree: Any) -> Any:
    while (
        isinstance(tree, lark.Tree)
        and tree.data in _PASS_THROUGH
        and len(tree.children) == 1
        and isinstance(tree.children[0], lark.Tree)
    ):
        tree = tree.children[0]
    return tree


def _arguments(tree: lark.Tree[Any], first: int) -> list[Any]:
    rest = tree.children[first:]
    return list(rest[0].children) if rest and isinstance(rest[0], lark.Tree) else []


def _string_literal(tree: Any) -> str | None:
    node = _unwrap(tree)
    if isinstance(node, lark.Tree) and node.data == "literal":
        token = str(node.children[0])
        if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
            return token[1:-1]
    return None


@dataclass
class _RuleLint:
    """Static checks of one rule against the schema of its node (what cel-go's checker would see)."""

    scope: dict[str, tuple[Schema | None, str]]
    undefined: list[str] = field(default_factory=list)
    unbounded: list[str] = field(default_factory=list)
    expensive: bool = False

    def visit(self, tree: Any, scope: dict[str, tuple[Schema | None, str]] | None = None) -> None:
        scope = self.scope if scope is None else scope
        if not isinstance(tree, lark.Tree):
            return
        if tree.data == "member_dot_arg":
            self._method(tree, scope)
            return
        if tree.data == "ident_arg":
            self._function(tree, scope)
            return
        if tree.data in ("member_dot", "member_index"):
            self.resolve(tree, scope)
        for child in tree.children:
            self.visit(child, scope)

    def _method(self, tree: lark.Tree[Any], scope: dict[str, tuple[Schema | None, str]]) -> None:
        receiver, name, args = tree.children[0], str(tree.children[1]), _arguments(tree, 2)
        target, label = self.resolve(receiver, scope)
        self.visit(receiver, scope)
        variable = _unwrap(args[0]) if len(args) == 2 else None
        if name in _MACROS and isinstance(variable, lark.Tree) and variable.data == "ident":
            self.expensive = True
            self._bounded_collection(target, label, name)
            inner = {**scope, str(variable.children[0]): (_element(target), f"{label}[*]")}
            self.visit(args[1], inner)
            return
        if name in _STRING_SCANS:
            self._bounded_string(target, label, name)
        for arg in args:
            self.visit(arg, scope)

    def _function(self, tree: lark.Tree[Any], scope: dict[str, tuple[Schema | None, str]]) -> None:
        name, args = str(tree.children[0]), _arguments(tree, 1)
        if name in _STRING_SCANS and args:
            target, label = self.resolve(args[0], scope)
            self._bounded_string(target, label, name)
        for arg in args:
            self.visit(arg, scope)

    def resolve(self, tree: Any, scope: dict[str, tuple[Schema | None, str]]) -> tuple[Schema | None, str]:
        """The schema and a readable label of a ``self.a.b['c']`` style expression."""
        node = _unwrap(tree)
        if not isinstance(node, lark.Tree):
            return None, "?"
        if node.data == "ident":
            name = str(node.children[0])
            return scope.get(name, (None, name))
        if node.data == "member_dot":
            base, label = self.resolve(node.children[0], scope)
            name = str(node.children[1])
            return self._field(base, name), f"{label}.{name}"
        if node.data == "member_index":
            base, label = self.resolve(node.children[0], scope)
            key = _string_literal(node.children[1])
            return _indexed(base, key), f"{label}[{key!r}]" if key is not None else f"{label}[...]"
        return None, "(expression)"

    def _field(self, base: Schema | None, name: str) -> Schema | None:
        if base is None:
            return None
        view = _cel_view(base, _embedded(base))
        for key, sub in _props(view).items():
            if cel_escape(key) == name:
                return sub
        extra = _additional(view)
        if extra is not None:
            return extra
        closed = view.get("type") == "object" and not _preserves_unknown(view)
        if closed or view.get("type") in _SCALAR_TYPES or view.get("type") == "array":
            self.undefined.append(f"undefined field '{name}'")
        return None

    def _bounded_collection(self, target: Schema | None, label: str, macro: str) -> None:
        if target is None:
            return
        if target.get("type") == "array" and "maxItems" not in target:
            self.unbounded.append(f"{macro}() iterates over {label}, a list without maxItems")
        elif _additional(target) is not None and "maxProperties" not in target:
            self.unbounded.append(f"{macro}() iterates over {label}, a map without maxProperties")

    def _bounded_string(self, target: Schema | None, label: str, function: str) -> None:
        bounded = target is None or target.get("type") != "string" or "maxLength" in target or "enum" in target
        if not bounded:
            self.unbounded.append(f"{function}() is applied to {label}, a string without maxLength")
        if function == "matches":
            self.expensive = True


def _element(schema: Schema | None) -> Schema | None:
    if schema is None:
        return None
    if schema.get("type") == "array":
        return _items(schema)
    return {"type": "string"} if _additional(schema) is not None else None


def _indexed(schema: Schema | None, key: str | None) -> Schema | None:
    if schema is None:
        return None
    if schema.get("type") == "array":
        return _items(schema)
    if key is not None and key in _props(schema):
        return _props(schema)[key]
    return _additional(schema)


@dataclass(frozen=True)
class _LintScope:
    resource_root: bool = True
    correlatable: bool = True  # oldSelf can be bound here (not under atomic/set list items)
    unbounded: str | None = None  # schema path of an enclosing list/map without a size limit


def cost_check(crd: Mapping[str, Any]) -> list[str]:
    """Static problems the API server would reject the CRD for (or that make rules unbounded).

    Every rule, messageExpression, fieldPath and reason is checked: rules must
    compile under cel-python and refer only to declared fields; ``matches()``
    and ``size()`` need a string with ``maxLength``; ``all()``, ``exists()``,
    ``exists_one()``, ``map()`` and ``filter()`` need a list with ``maxItems``
    (or a map with ``maxProperties``); an expensive rule must not sit under a
    list or map without such a limit; ``oldSelf`` must be correlatable. This is
    a stricter, simpler stand-in for the server's cost estimator.
    """
    problems: list[str] = []
    for index, entry in enumerate(crd.get("spec", {}).get("versions", [])):
        schema = (entry.get("schema") or {}).get("openAPIV3Schema")
        if isinstance(schema, Mapping):
            _lint_schema(schema, f"spec.versions[{index}].schema.openAPIV3Schema", _LintScope(), problems)
    return problems


def _lint_schema(schema: Schema, path: str, scope: _LintScope, problems: list[str]) -> None:
    holders = [
        (path, schema),
        *((f"{path}.allOf[{j}]", sub) for j, sub in enumerate(schema.get("allOf") or [])),
    ]
    for holder_path, holder in holders:
        for i, rule in enumerate(holder.get("x-kubernetes-validations") or []):
            problems += _lint_rule(rule, schema, f"{holder_path}.x-kubernetes-validations[{i}]", scope)
    for name, sub in _props(schema).items():
        _lint_schema(
            sub,
            f"{path}.properties[{name}]",
            _LintScope(_embedded(sub), scope.correlatable, scope.unbounded),
            problems,
        )
    items = _items(schema)
    if items is not None:
        correlatable = scope.correlatable and schema.get("x-kubernetes-list-type") == "map"
        unbounded = scope.unbounded or (None if "maxItems" in schema else path)
        _lint_schema(items, f"{path}.items", _LintScope(_embedded(items), correlatable, unbounded), problems)
    extra = _additional(schema)
    if extra is not None:
        unbounded = scope.unbounded or (None if "maxProperties" in schema else path)
        _lint_schema(
            extra,
            f"{path}.additionalProperties",
            _LintScope(_embedded(extra), scope.correlatable, unbounded),
            problems,
        )


def _lint_rule(rule: Mapping[str, Any], schema: Schema, path: str, scope: _LintScope) -> list[str]:
    text = str(rule.get("rule") or "")
    if not text.strip():
        return [f"{path}.rule: Required value"]
    tree = _parse(text)
    if isinstance(tree, str):
        return [f"{path}.rule: Invalid value: {json.dumps(text)}: compilation failed: {tree}"]
    view = _cel_view(schema, scope.resource_root)
    lint = _RuleLint({"self": (view, "self"), "oldSelf": (view, "oldSelf")})
    lint.visit(tree)
    quoted = json.dumps(text)
    problems = [f"{path}.rule: Invalid value: {quoted}: compilation failed: {u}" for u in dict.fromkeys(lint.undefined)]
    problems += [f"{path}.rule: Forbidden: unbounded estimated cost: {u}" for u in dict.fromkeys(lint.unbounded)]
    if lint.expensive and scope.unbounded:
        problems.append(
            f"{path}.rule: Forbidden: unbounded estimated cost: the rule runs once per element of "
            f"{scope.unbounded}, which has no maxItems/maxProperties"
        )
    problems += _lint_old_self(rule, text, path, scope)
    problems += _lint_rule_fields(rule, schema, path)
    return problems


def _lint_old_self(rule: Mapping[str, Any], text: str, path: str, scope: _LintScope) -> list[str]:
    uses_old = _uses_old_self(text)
    problems = []
    if uses_old and not scope.correlatable:
        problems.append(
            f"{path}.rule: Invalid value: {json.dumps(text)}: oldSelf cannot be used on the uncorrelatable "
            "portion of the schema (items of a list that is not x-kubernetes-list-type: map)"
        )
    if rule.get("optionalOldSelf") is True and not uses_old:
        problems.append(f"{path}.optionalOldSelf: Forbidden: may not be set if rule does not use oldSelf")
    return problems


def _lint_rule_fields(rule: Mapping[str, Any], schema: Schema, path: str) -> list[str]:
    problems = []
    reason = rule.get("reason")
    if reason is not None and reason not in _REASONS:
        supported = ", ".join(json.dumps(r) for r in _REASONS)
        problems.append(f"{path}.reason: Unsupported value: {go_value(reason)}: supported values: {supported}")
    field_path = rule.get("fieldPath")
    if field_path is not None:
        try:
            _resolve_field_path(str(field_path), schema)
        except ValueError as exc:
            problems.append(f"{path}.fieldPath: Invalid value: {go_value(field_path)}: {exc}")
    message = str(rule.get("message") or "")
    if "\n" in message:
        problems.append(f"{path}.message: Invalid value: {go_value(message)}: message must not contain line breaks")
    expression = rule.get("messageExpression")
    if expression is not None:
        tree = _parse(str(expression))
        if isinstance(tree, str):
            problems.append(
                f"{path}.messageExpression: Invalid value: {go_value(expression)}: "
                f"messageExpression compilation failed: {tree}"
            )
    return problems


# --------------------------------------------------------------------------- structural_check

_VALUE_VALIDATION_FORBIDDEN: Final = (
    "type",
    "properties",
    "items",
    "additionalProperties",
    "nullable",
    "default",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
)


def structural_check(crd: Mapping[str, Any]) -> list[str]:
    """The common reasons the API server rejects a CRD schema as not structural.

    Covers: a missing ``type`` (outside int-or-string / preserve-unknown-fields
    nodes), ``$ref``, ``additionalProperties: false``, ``properties`` together
    with ``additionalProperties``, arrays without ``items``, ``uniqueItems: true``,
    types or structure inside ``allOf``/``anyOf``/``oneOf``/``not``, list-type
    map keys that are neither required nor defaulted, and defaults that are
    invalid under their own schema or contain fields the schema would prune.
    """
    problems: list[str] = []
    for index, entry in enumerate(crd.get("spec", {}).get("versions", [])):
        schema = (entry.get("schema") or {}).get("openAPIV3Schema")
        if isinstance(schema, Mapping):
            _structural_node(schema, f"spec.versions[{index}].schema.openAPIV3Schema", problems, root=True)
    return problems


def _structural_node(schema: Schema, path: str, problems: list[str], *, root: bool = False) -> None:
    free_form = schema.get("x-kubernetes-int-or-string") or _preserves_unknown(schema)
    if not schema.get("type") and not free_form:
        problems.append(f"{path}.type: Required value: must not be empty for specified object fields")
    if "$ref" in schema:
        problems.append(f"{path}.$ref: Forbidden: $ref is not supported")
    if schema.get("additionalProperties") is False:
        problems.append(f"{path}.additionalProperties: Forbidden: additionalProperties: false is not supported")
    if _props(schema) and _additional(schema) is not None:
        detail = "additionalProperties and properties are mutual exclusive"
        problems.append(f"{path}.additionalProperties: Forbidden: {detail}")
    if schema.get("type") == "array" and _items(schema) is None:
        problems.append(f"{path}.items: Required value: must be specified")
    if schema.get("uniqueItems") is True:
        problems.append(f"{path}.uniqueItems: Forbidden: uniqueItems cannot be set to true")
    if root and "default" in schema:
        problems.append(f"{path}.default: Forbidden: must not be set at the root")
    _structural_value_validations(schema, path, problems)
    _structural_map_keys(schema, path, problems)
    _structural_default(schema, path, problems)
    for name, sub in _props(schema).items():
        _structural_node(sub, f"{path}.properties[{name}]", problems)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), Mapping):
            _structural_node(schema[key], f"{path}.{key}", problems)


def _structural_value_validations(schema: Schema, path: str, problems: list[str]) -> None:
    nested = [
        (f"{path}.{k}[{i}]", sub) for k in ("allOf", "anyOf", "oneOf") for i, sub in enumerate(schema.get(k) or [])
    ]
    if isinstance(schema.get("not"), Mapping):
        nested.append((f"{path}.not", schema["not"]))
    for sub_path, sub in nested:
        for key in _VALUE_VALIDATION_FORBIDDEN:
            if key in sub and not (key == "type" and _int_or_string_branch(schema, sub)):
                problems.append(f"{sub_path}.{key}: Forbidden: must be empty to be structural")


def _int_or_string_branch(schema: Schema, sub: Schema) -> bool:
    return bool(schema.get("x-kubernetes-int-or-string")) and sub.get("type") in ("integer", "string")


def _structural_map_keys(schema: Schema, path: str, problems: list[str]) -> None:
    if schema.get("x-kubernetes-list-type") != "map":
        return
    item = _items(schema) or {}
    for key in schema.get("x-kubernetes-list-map-keys") or []:
        sub = _props(item).get(key)
        if sub is None:
            problems.append(f"{path}.x-kubernetes-list-map-keys: Invalid value: {go_value(key)}: is not a property")
        elif key not in (item.get("required") or []) and not _has_default(sub):
            detail = "must be required or have a default value"
            problems.append(f"{path}.x-kubernetes-list-map-keys: Invalid value: {go_value(key)}: {detail}")


def _structural_default(schema: Schema, path: str, problems: list[str]) -> None:
    if not _has_default(schema):
        return
    default = schema["default"]
    unknown: list[str] = []
    pruned = _prune(copy.deepcopy(default), schema, "", unknown)
    if unknown:
        problems.append(f"{path}.default: Invalid value: {go_value(default)}: must not have unknown fields")
    _apply_defaults(pruned, schema)
    errors: list[FieldError] = []
    _validate_node(pruned, schema, "default", MISSING, errors)
    for error in errors:
        detail = error.detail or f"{error.path}: {_ERROR_TYPES[error.type]}"
        problems.append(f"{path}.default: Invalid value: {go_value(default)}: {detail}")
