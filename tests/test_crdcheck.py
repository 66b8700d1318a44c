"""tests/support/crdcheck.py: API-server admission of custom resources, offline.

The CRD here is written by hand after the ObsDumpTask CRD that Ferry generates;
the expected messages are the ones kube-apiserver 1.35+ returns.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.support.crdcheck import admit, cel_escape, cost_check, go_float, structural_check, validate

IMMUTABLE = "spec.{} cannot change after creation; only spec.state can"
TASK_NAME_MESSAGE = "taskName must be 4-64 characters of letters, digits, '-' and '_'"
TOPIC_REGEX_MESSAGE = "topicRegex must not match every topic"
ONE_OF_MESSAGE = "exactly one of topics and topicRegex"
BLOCKED = (
    '<nil>: Invalid value: "null": some validation rules were not checked because the object was invalid; '
    "correct the existing errors to complete validation"
)


def _required_immutable(name: str) -> dict[str, Any]:
    return {"rule": f"self.{name} == oldSelf.{name}", "message": IMMUTABLE.format(name)}


def _optional_immutable(name: str) -> dict[str, Any]:
    rule = f"has(self.{name}) == has(oldSelf.{name}) && (!has(self.{name}) || self.{name} == oldSelf.{name})"
    return {"rule": rule, "message": IMMUTABLE.format(name)}


SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["taskName", "target"],
    "properties": {
        "taskName": {
            "type": "string",
            "maxLength": 64,
            "x-kubernetes-validations": [
                {"rule": "self.matches('^[A-Za-z0-9_-]{4,64}$')", "message": TASK_NAME_MESSAGE},
            ],
        },
        "topics": {
            "type": "array",
            "maxItems": 20,
            "x-kubernetes-list-type": "set",
            "items": {"type": "string", "maxLength": 249},
        },
        "topicRegex": {
            "type": "string",
            "maxLength": 255,
            "x-kubernetes-validations": [
                {"rule": "!(self in ['.*', '^.*$', '.+', '^.+$'])", "message": TOPIC_REGEX_MESSAGE},
            ],
        },
        "state": {"type": "string", "enum": ["Running", "Paused"], "default": "Running"},
        "dumpPeriodSeconds": {"type": "integer", "minimum": 1, "default": 300},
        "target": {
            "type": "object",
            "required": ["bucket"],
            "properties": {
                "bucket": {"type": "string", "maxLength": 63},
                "directory": {"type": "string", "maxLength": 1024},
            },
        },
    },
    "x-kubernetes-validations": [
        {"rule": "has(self.topics) != has(self.topicRegex)", "message": ONE_OF_MESSAGE},
        _required_immutable("taskName"),
        _required_immutable("target"),
        _required_immutable("dumpPeriodSeconds"),
        _optional_immutable("topics"),
        _optional_immutable("topicRegex"),
    ],
}


def _crd(spec_schema: dict[str, Any] | None = None, *, status: bool = True) -> dict[str, Any]:
    root = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": copy.deepcopy(SPEC_SCHEMA if spec_schema is None else spec_schema),
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }
    version: dict[str, Any] = {"name": "v1alpha1", "served": True, "storage": True}
    version["schema"] = {"openAPIV3Schema": root}
    if status:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "obsdumptasks.ferry.io"},
        "spec": {
            "group": "ferry.io",
            "scope": "Namespaced",
            "names": {"kind": "ObsDumpTask", "plural": "obsdumptasks", "singular": "obsdumptask"},
            "versions": [version],
        },
    }


CRD = _crd()


def task(**spec: Any) -> dict[str, Any]:
    """An ObsDumpTask; spec values of None are left out."""
    body: dict[str, Any] = {"taskName": "orders-dump", "topics": ["orders"], "target": {"bucket": "dumps"}}
    body.update(spec)
    return {
        "apiVersion": "ferry.io/v1alpha1",
        "kind": "ObsDumpTask",
        "metadata": {"name": "orders", "namespace": "default"},
        "spec": {k: v for k, v in body.items() if v is not None},
    }


def one_field_crd(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD whose spec has the single property ``value``."""
    return _crd({"type": "object", "properties": {"value": schema}}, status=False)


def holder(value: Any) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.io/v1alpha1",
        "kind": "ObsDumpTask",
        "metadata": {"name": "x"},
        "spec": {"value": value},
    }


# --------------------------------------------------------------------------- creation


def test_valid_create_is_admitted_with_defaults() -> None:
    result = admit(CRD, task())
    assert result.errors == []
    assert result.allowed
    assert result.object["spec"]["state"] == "Running"
    assert result.object["spec"]["dumpPeriodSeconds"] == 300
    assert result.object["spec"]["target"] == {"bucket": "dumps"}


def test_explicit_values_are_not_overwritten_by_defaults() -> None:
    spec = admit(CRD, task(state="Paused", dumpPeriodSeconds=60, topics=None, topicRegex="^orders-.*$")).object["spec"]
    assert (spec["state"], spec["dumpPeriodSeconds"], spec["topicRegex"]) == ("Paused", 60, "^orders-.*$")


def test_nested_defaults_apply_only_under_a_present_parent() -> None:
    schema = {
        "type": "object",
        "properties": {
            "target": {
                "type": "object",
                "properties": {"directory": {"type": "string", "default": "dumps/"}},
            },
            "retry": {
                "type": "object",
                "default": {},
                "properties": {"limit": {"type": "integer", "default": 3}},
            },
        },
    }
    crd = _crd(schema, status=False)
    assert admit(crd, holder(None)).object["spec"] == {"retry": {"limit": 3}}
    with_target = {**holder(None), "spec": {"target": {}}}
    assert admit(crd, with_target).object["spec"] == {
        "target": {"directory": "dumps/"},
        "retry": {"limit": 3},
    }


def test_a_null_is_replaced_by_the_default_and_otherwise_dropped() -> None:
    obj = task()
    obj["spec"].update(state=None, topicRegex=None)
    result = admit(CRD, obj)
    assert result.errors == []
    assert result.object["spec"]["state"] == "Running"
    assert "topicRegex" not in result.object["spec"]


def test_unknown_fields_are_pruned_with_a_warning() -> None:
    obj = task(typo="x")
    obj["spec"]["target"]["region"] = "eu"
    obj["extra"] = True
    result = admit(CRD, obj)
    assert result.errors == []
    assert "typo" not in result.object["spec"]
    assert result.object["spec"]["target"] == {"bucket": "dumps"}
    assert "extra" not in result.object
    assert result.object["metadata"] == {"name": "orders", "namespace": "default"}
    assert result.warnings == [
        'unknown field "spec.target.region"',
        'unknown field "spec.typo"',
        'unknown field "extra"',
    ]


def test_strict_field_validation_rejects_unknown_fields() -> None:
    errors = validate(CRD, task(typo="x"), field_validation="Strict")
    assert errors == [
        'ObsDumpTask in version "v1alpha1" cannot be handled as a ObsDumpTask: '
        'strict decoding error: unknown field "spec.typo"'
    ]


def test_status_is_dropped_on_create_when_the_status_subresource_is_enabled() -> None:
    obj = task() | {"status": {"phase": "Dumping"}}
    assert "status" not in admit(CRD, obj).object
    assert admit(_crd(status=False), obj).object["status"] == {"phase": "Dumping"}


def test_the_input_object_is_not_modified() -> None:
    obj = task(typo="x")
    before = copy.deepcopy(obj)
    admit(CRD, obj)
    assert obj == before


# --------------------------------------------------------------------------- CEL rules on create


@pytest.mark.parametrize("name", ["abc", "has space", "a" * 65, "naïve-task"])
def test_task_name_rule(name: str) -> None:
    errors = validate(CRD, task(taskName=name))
    if len(name) > 64:
        assert errors == ["spec.taskName: Too long: may not be more than 64 bytes", BLOCKED]
    else:
        assert errors == [f'spec.taskName: Invalid value: "{name}": {TASK_NAME_MESSAGE}']


@pytest.mark.parametrize("regex", [".*", "^.*$", ".+", "^.+$"])
def test_topic_regex_may_not_match_everything(regex: str) -> None:
    errors = validate(CRD, task(topics=None, topicRegex=regex))
    assert errors == [f'spec.topicRegex: Invalid value: "{regex}": {TOPIC_REGEX_MESSAGE}']


def test_a_narrow_topic_regex_is_admitted() -> None:
    assert validate(CRD, task(topics=None, topicRegex="^orders\\..+$")) == []


@pytest.mark.parametrize("spec", [{"topics": None}, {"topicRegex": "^orders$"}], ids=["neither", "both"])
def test_exactly_one_of_topics_and_topic_regex(spec: dict[str, Any]) -> None:
    assert validate(CRD, task(**spec)) == [f"spec: Invalid value: {ONE_OF_MESSAGE}"]


def test_transition_rules_do_not_run_on_create() -> None:
    assert validate(CRD, task(topics=None, topicRegex="^orders$")) == []


# --------------------------------------------------------------------------- schema validation


def test_enum_violation() -> None:
    assert validate(CRD, task(state="Stopped")) == [
        'spec.state: Unsupported value: "Stopped": supported values: "Running", "Paused"',
        BLOCKED,
    ]


def test_too_many_topics() -> None:
    assert validate(CRD, task(topics=[f"t{i}" for i in range(21)])) == [
        "spec.topics: Too many: 21: must have at most 20 items",
        BLOCKED,
    ]


def test_negative_period_is_invalid_but_not_blocking() -> None:
    assert validate(CRD, task(dumpPeriodSeconds=-5, topics=None)) == [
        "spec.dumpPeriodSeconds: Invalid value: -5: "
        "spec.dumpPeriodSeconds in body should be greater than or equal to 1",
        f"spec: Invalid value: {ONE_OF_MESSAGE}",
    ]


def test_wrong_types() -> None:
    # errors come in the schema's property order
    assert validate(CRD, task(dumpPeriodSeconds="300", target="dumps")) == [
        'spec.dumpPeriodSeconds: Invalid value: "string": '
        'spec.dumpPeriodSeconds in body must be of type integer: "string"',
        'spec.target: Invalid value: "string": spec.target in body must be of type object: "string"',
        BLOCKED,
    ]


def test_integral_float_is_an_integer() -> None:
    result = admit(CRD, task(dumpPeriodSeconds=60.0))
    assert result.errors == []


def test_required_fields() -> None:
    obj = task(target={})
    del obj["spec"]["taskName"]
    assert validate(CRD, obj) == [
        "spec.target.bucket: Required value",
        "spec.taskName: Required value",
        BLOCKED,
    ]
    assert validate(CRD, {"apiVersion": "ferry.io/v1alpha1", "kind": "ObsDumpTask"}) == [
        "spec: Required value",
        BLOCKED,
    ]


def test_duplicate_in_a_set() -> None:
    assert validate(CRD, task(topics=["a", "b", "a", "a"])) == ['spec.topics[2]: Duplicate value: "a"']


SCHEMA_CASES: list[tuple[dict[str, Any], Any, str]] = [
    (
        {"type": "string", "pattern": "^[a-z]+$"},
        "A1",
        "spec.value: Invalid value: \"A1\": spec.value in body should match '^[a-z]+$'",
    ),
    (
        {"type": "string", "minLength": 3},
        "ab",
        'spec.value: Invalid value: "ab": spec.value in body should be at least 3 chars long',
    ),
    (
        {"type": "number", "maximum": 1.5, "exclusiveMaximum": True},
        1.5,
        "spec.value: Invalid value: 1.5: spec.value in body should be less than 1.5",
    ),
    (
        {"type": "integer", "multipleOf": 5},
        7,
        "spec.value: Invalid value: 7: spec.value in body should be a multiple of 5",
    ),
    (
        {"type": "array", "minItems": 1, "items": {"type": "string"}},
        [],
        "spec.value: Invalid value: 0: spec.value in body should have at least 1 items",
    ),
    (
        {"type": "array", "items": {"type": "integer"}},
        [1, "2"],
        'spec.value[1]: Invalid value: "string": spec.value[1] in body must be of type integer: "string"',
    ),
    (
        {"type": "object", "additionalProperties": {"type": "integer"}},
        {"a": "x"},
        'spec.value.a: Invalid value: "string": spec.value.a in body must be of type integer: "string"',
    ),
    (
        {"type": "object", "maxProperties": 1, "additionalProperties": {"type": "string"}},
        {"a": "1", "b": "2"},
        "spec.value: Too many: 2: must have at most 1 item",
    ),
    (
        {"type": "string", "format": "date-time"},
        "yesterday",
        'spec.value: Invalid value: "yesterday": spec.value in body must be of type date-time: "yesterday"',
    ),
    (
        {"type": "array", "items": {"type": "string"}},
        ["a", None],
        'spec.value[1]: Invalid value: "null": spec.value[1] in body must be of type string: "null"',
    ),
]


@pytest.mark.parametrize(("schema", "value", "message"), SCHEMA_CASES)
def test_schema_messages(schema: dict[str, Any], value: Any, message: str) -> None:
    assert message in validate(one_field_crd(schema), holder(value))


@pytest.mark.parametrize("value", [7, "7", "50%"])
def test_int_or_string(value: Any) -> None:
    assert validate(one_field_crd({"x-kubernetes-int-or-string": True}), holder(value)) == []


def test_int_or_string_rejects_other_types() -> None:
    assert validate(one_field_crd({"x-kubernetes-int-or-string": True}), holder(True)) == [
        'spec.value: Invalid value: "boolean": spec.value in body must be of type integer,string: "boolean"'
    ]


def test_nullable_and_preserve_unknown_fields() -> None:
    crd = one_field_crd({"type": "object", "nullable": True, "x-kubernetes-preserve-unknown-fields": True})
    assert admit(crd, holder(None)).object["spec"] == {"value": None}
    assert admit(crd, holder({"any": {"thing": [1]}})).object["spec"] == {"value": {"any": {"thing": [1]}}}


def test_list_map_keys_must_be_unique() -> None:
    schema = {
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
        "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
    }
    errors = validate(one_field_crd(schema), holder([{"name": "a"}, {"name": "a"}]))
    assert errors == ['spec.value[1]: Duplicate value: {"name":"a"}']


# --------------------------------------------------------------------------- updates


def test_changing_only_the_state_is_admitted() -> None:
    old = admit(CRD, task()).object
    assert validate(CRD, task(state="Paused"), old=old) == []


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"target": {"bucket": "other"}}, "target"),
        ({"target": {"bucket": "dumps", "directory": "x/"}}, "target"),
        ({"taskName": "renamed-task"}, "taskName"),
        ({"dumpPeriodSeconds": 60}, "dumpPeriodSeconds"),
        ({"topics": ["orders", "payments"]}, "topics"),
    ],
)
def test_immutable_fields(change: dict[str, Any], name: str) -> None:
    old = admit(CRD, task()).object
    assert validate(CRD, task(**change), old=old) == [f"spec: Invalid value: {IMMUTABLE.format(name)}"]


def test_switching_from_topics_to_topic_regex_is_rejected() -> None:
    old = admit(CRD, task()).object
    errors = validate(CRD, task(topics=None, topicRegex="^orders$"), old=old)
    assert errors == [
        f"spec: Invalid value: {IMMUTABLE.format('topics')}",
        f"spec: Invalid value: {IMMUTABLE.format('topicRegex')}",
    ]


def test_removing_an_optional_field_is_rejected() -> None:
    old = admit(CRD, task(target={"bucket": "dumps", "directory": "x/"})).object
    errors = validate(CRD, task(), old=old)
    assert errors == [f"spec: Invalid value: {IMMUTABLE.format('target')}"]


def test_defaults_make_an_omitted_field_unchanged() -> None:
    old = admit(CRD, task(dumpPeriodSeconds=300)).object
    assert validate(CRD, task(), old=old) == []


def test_status_updates_go_through_the_status_subresource() -> None:
    old = admit(CRD, task()).object
    main = admit(CRD, task() | {"status": {"phase": "Dumping"}}, old=old)
    assert "status" not in main.object
    status = admit(CRD, task(taskName="ignored-name") | {"status": {"phase": "Dumping"}}, old=old, subresource="status")
    assert status.errors == []
    assert status.object["status"] == {"phase": "Dumping"}
    assert status.object["spec"]["taskName"] == "orders-dump"


def test_ratcheting_keeps_unchanged_invalid_values() -> None:
    old = admit(CRD, task(taskName="bad name", dumpPeriodSeconds=0)).object
    result = admit(CRD, task(taskName="bad name", dumpPeriodSeconds=0, state="Paused"), old=old)
    assert result.errors == []
    assert result.warnings == [f'spec.taskName: Invalid value: "bad name": {TASK_NAME_MESSAGE}']
    assert validate(CRD, task(taskName="bad name", dumpPeriodSeconds=0, state="Paused"), old=old, ratcheting=False) == [
        "spec.dumpPeriodSeconds: Invalid value: 0: spec.dumpPeriodSeconds in body should be greater than or equal to 1",
        f'spec.taskName: Invalid value: "bad name": {TASK_NAME_MESSAGE}',
    ]


def test_changed_invalid_value_is_not_ratcheted() -> None:
    old = admit(CRD, task(taskName="bad name")).object
    # like the server: a node's own rules run before the rules of its children
    assert validate(CRD, task(taskName="bad  name"), old=old) == [
        f"spec: Invalid value: {IMMUTABLE.format('taskName')}",
        f'spec.taskName: Invalid value: "bad  name": {TASK_NAME_MESSAGE}',
    ]


# --------------------------------------------------------------------------- rule options


def _rule_crd(rule: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    value_schema = {"type": "string", "maxLength": 16} if schema is None else schema
    properties = {"value": value_schema, "other": {"type": "string"}}
    return _crd({"type": "object", "properties": properties, "x-kubernetes-validations": [rule]}, status=False)


def test_default_message_names_the_rule() -> None:
    crd = _rule_crd({"rule": "self.value != 'x'"})
    assert validate(crd, holder("x")) == ["spec: Invalid value: failed rule: self.value != 'x'"]


def test_message_expression() -> None:
    rule = {
        "rule": "self.value != 'x'",
        "message": "static",
        "messageExpression": "'value ' + self.value + ' is taken'",
    }
    assert validate(_rule_crd(rule), holder("x")) == ["spec: Invalid value: value x is taken"]


def test_failing_message_expression_falls_back_to_the_message() -> None:
    rule = {"rule": "self.value != 'x'", "message": "static", "messageExpression": "self.other"}
    assert validate(_rule_crd(rule), holder("x")) == ["spec: Invalid value: static"]


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        (None, "spec.value: Invalid value: bad value"),  # the value shown is the rule's node: an object
        ("FieldValueForbidden", "spec.value: Forbidden: bad value"),
        ("FieldValueRequired", "spec.value: Required value: bad value"),
        ("FieldValueDuplicate", "spec.value: Duplicate value"),
    ],
)
def test_field_path_and_reason(reason: str | None, message: str) -> None:
    rule = {"rule": "self.value != 'x'", "message": "bad value", "fieldPath": ".value", "reason": reason}
    rule = {k: v for k, v in rule.items() if v is not None}
    assert validate(_rule_crd(rule), holder("x")) == [message]


def test_runtime_error_is_reported() -> None:
    crd = _rule_crd({"rule": "self.other == 'y'", "message": "other must be y"})
    assert validate(crd, holder("x")) == [
        'spec: Invalid value: "object": no such key: other evaluating rule: other must be y'
    ]


def test_compile_error_is_reported() -> None:
    crd = _rule_crd({"rule": "self.value ==", "message": "broken"})
    [error] = validate(crd, holder("x"))
    assert error.startswith('spec: Invalid value: "object": rule compile error: compilation failed: ERROR: <input>:')


def test_optional_old_self() -> None:
    rule = {
        "rule": "!oldSelf.hasValue() || oldSelf.value() == self || oldSelf.orValue('') == 'draft'",
        "message": "value is fixed once set",
        "optionalOldSelf": True,
    }
    crd = one_field_crd({"type": "string", "maxLength": 16, "x-kubernetes-validations": [rule]})
    assert validate(crd, holder("a")) == []  # runs on create, oldSelf is optional.none()
    assert validate(crd, holder("b"), old=holder("a")) == ['spec.value: Invalid value: "b": value is fixed once set']
    assert validate(crd, holder("b"), old=holder("draft")) == []


def test_optional_namespace_functions() -> None:
    rule = {"rule": "optional.of(self.value).orValue('') == self.value && !optional.none().hasValue()"}
    assert validate(_rule_crd(rule), holder("x")) == []


def test_rules_on_absent_and_null_nodes_are_skipped() -> None:
    rule = {"rule": "self.size() > 100", "message": "never true"}
    crd = one_field_crd({"type": "string", "nullable": True, "maxLength": 10, "x-kubernetes-validations": [rule]})
    assert validate(crd, holder(None)) == []
    assert validate(crd, {**holder(None), "spec": {}}) == []
    assert validate(crd, holder("abc")) == ['spec.value: Invalid value: "abc": never true']


def test_rules_on_list_items_and_map_values_use_item_paths() -> None:
    rule = {"rule": "self.startsWith('t-')", "message": "must start with t-"}
    item = {"type": "string", "maxLength": 10, "x-kubernetes-validations": [rule]}
    lists = one_field_crd({"type": "array", "maxItems": 5, "items": item})
    assert validate(lists, holder(["t-1", "x"])) == ['spec.value[1]: Invalid value: "x": must start with t-']
    maps = one_field_crd({"type": "object", "maxProperties": 5, "additionalProperties": item})
    assert validate(maps, holder({"k": "x"})) == ['spec.value[k]: Invalid value: "x": must start with t-']


def test_old_self_of_list_map_items_is_correlated_by_key() -> None:
    rule = {"rule": "self.size == oldSelf.size", "message": "size is immutable"}
    schema = {
        "type": "array",
        "maxItems": 5,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
        "items": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "size": {"type": "integer"}},
            "x-kubernetes-validations": [rule],
        },
    }
    crd = one_field_crd(schema)
    old = holder([{"name": "a", "size": 1}, {"name": "b", "size": 2}])
    assert (
        validate(
            crd,
            holder([{"name": "b", "size": 2}, {"name": "a", "size": 1}, {"name": "c", "size": 9}]),
            old=old,
        )
        == []
    )
    assert validate(crd, holder([{"name": "b", "size": 3}]), old=old) == [
        "spec.value[0]: Invalid value: size is immutable"
    ]


def test_escaped_property_names_and_root_rules() -> None:
    schema = {
        "type": "object",
        "properties": {"dump-period": {"type": "integer"}, "namespace": {"type": "string"}},
    }
    crd = _crd(schema, status=False)
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    root["x-kubernetes-validations"] = [
        {
            "rule": "self.metadata.name.startsWith('t') && self.kind == 'ObsDumpTask'",
            "message": "name must start with t",
        },
        {
            "rule": "self.spec.dump__dash__period > 0 && self.spec.__namespace__ != 'kube-system'",
            "message": "spec",
        },
    ]
    obj = {**holder(None), "spec": {"dump-period": 1, "namespace": "ferry"}, "metadata": {"name": "task"}}
    assert validate(crd, obj) == []
    obj["metadata"]["name"] = "other"
    assert validate(crd, obj) == ["<nil>: Invalid value: name must start with t"]


# --------------------------------------------------------------------------- CEL language coverage


@pytest.mark.parametrize(
    ("rule", "value"),
    [
        ("has(self.a) && !has(self.b)", {"a": 1}),
        ("size(self.s) == 3 && self.s.size() == 3", {"s": "abc"}),
        ("self.s.matches('^[a-c]{3}$') && !self.s.matches('^b')", {"s": "abc"}),
        ("self.s in ['x', 'abc'] && !('y' in self.l)", {"s": "abc", "l": ["x"]}),
        ("self.a == 1 ? self.s == 'abc' : false", {"a": 1, "s": "abc"}),
        ("self.a > 0 || self.missing == 1", {"a": 1}),
        ("self.s < 'abd' && 'b' > self.s && self.s >= 'abc'", {"s": "abc"}),
        ("self.l.all(x, x.startsWith('t')) && self.l.exists_one(x, x.endsWith('2'))", {"l": ["t1", "t2"]}),
        ("self.l.exists(x, x.contains('1')) && self.l.filter(x, x != 't1') == ['t2']", {"l": ["t1", "t2"]}),
        ("self.l.map(x, x + '!') == ['t1!']", {"l": ["t1"]}),
        ("self.a * 3 + 4 / 2 - 7 % 4 == 2 && -self.a == -1", {"a": 1}),
        ("self.l == ['x', 'y'] && self.l != ['y', 'x']", {"l": ["x", "y"]}),
        (
            "self.m == {'k': [1, {'n': 'v'}]} && self.m != {'k': [1, {'n': 'w'}]}",
            {"m": {"k": [1, {"n": "v"}]}},
        ),
        (
            "self.m.all(k, k.size() == 1) && 'k' in self.m && self.m['k'][0] == 1",
            {"m": {"k": [1, {"n": "v"}]}},
        ),
        ("int(self.s) + 1 == 43 && string(self.a) == '1' && type(self.a) == int", {"s": "42", "a": 1}),
        ("self.s.lowerAscii() == 'abc' && self.s.upperAscii() == 'ABC' && ' x '.trim() == 'x'", {"s": "aBc"}),
        ("self.s.split(',') == ['a', 'b'] && ['a', 'b'].join('-') == 'a-b'", {"s": "a,b"}),
        (
            "self.s.replace('a', 'z') == 'zbc' && self.s.indexOf('c') == 2 && self.s.substring(1) == 'bc'",
            {"s": "abc"},
        ),
        (
            "self.l.isSorted() && self.l.sum() == 6 && self.l.min() == 1 && self.l.max() == 3",
            {"l": [1, 2, 3]},
        ),
        ("self.s.find('[0-9]+') == '42' && self.s.findAll('[a-z]') == ['a', 'b']", {"s": "a42b"}),
    ],
)
def test_cel_features(rule: str, value: dict[str, Any]) -> None:
    crd = one_field_crd(
        {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "x-kubernetes-validations": [{"rule": rule}],
        }
    )
    assert validate(crd, holder(value)) == []


@pytest.mark.parametrize(
    ("rule", "value", "error"),
    [
        ("self.missing == 1", {}, "no such key: missing"),
        ("self.a / 0 == 1", {"a": 1}, "division by zero"),
        ("self.a % 0 == 1", {"a": 1}, "modulus by zero"),
        ("self.a + 9223372036854775807 > 0", {"a": 1}, "integer overflow"),
        ("self.l[3] == 1", {"l": [1]}, "index out of range"),
    ],
)
def test_cel_runtime_errors(rule: str, value: dict[str, Any], error: str) -> None:
    crd = one_field_crd(
        {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "x-kubernetes-validations": [{"rule": rule}],
        }
    )
    assert validate(crd, holder(value)) == [f'spec.value: Invalid value: "object": {error} evaluating rule: {rule}']


def test_overload_errors_use_the_server_wording() -> None:
    crd = one_field_crd({"x-kubernetes-int-or-string": True, "x-kubernetes-validations": [{"rule": "self + 1 > 0"}]})
    assert validate(crd, holder("a")) == [
        "spec.value: Invalid value: \"\": 'no such overload': call arguments did not match a supported "
        "operator, function or macro signature for rule: self + 1 > 0"
    ]


def test_typed_cel_values() -> None:
    rule = "self.i == 2 && self.d == 2.0 && self.t > timestamp('2024-01-01T00:00:00Z') && self.p == duration('90s')"
    schema = {
        "type": "object",
        "x-kubernetes-validations": [{"rule": rule}],
        "properties": {
            "i": {"type": "integer"},
            "d": {"type": "number"},
            "t": {"type": "string", "format": "date-time"},
            "p": {"type": "string", "format": "duration"},
        },
    }
    value = {"i": 2, "d": 2, "t": "2025-06-01T12:00:00Z", "p": "1m30s"}
    assert validate(one_field_crd(schema), holder(value)) == []


# --------------------------------------------------------------------------- cost_check


def test_cost_check_accepts_the_obsdumptask_crd() -> None:
    assert cost_check(CRD) == []


def test_cost_check_reports_unbounded_strings_and_lists() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "x-kubernetes-validations": [{"rule": "self.matches('^a$')"}]},
            "tags": {
                "type": "array",
                "items": {"type": "string", "maxLength": 10},
                "x-kubernetes-validations": [{"rule": "self.all(t, size(t) < 5)"}],
            },
            "labels": {
                "type": "array",
                "items": {
                    "type": "string",
                    "maxLength": 10,
                    "x-kubernetes-validations": [{"rule": "self.matches('^x')"}],
                },
            },
        },
    }
    base = "spec.versions[0].schema.openAPIV3Schema.properties[spec]"
    assert cost_check(_crd(schema)) == [
        f"{base}.properties[name].x-kubernetes-validations[0].rule: Forbidden: unbounded estimated cost: "
        "matches() is applied to self, a string without maxLength",
        f"{base}.properties[tags].x-kubernetes-validations[0].rule: Forbidden: unbounded estimated cost: "
        "all() iterates over self, a list without maxItems",
        f"{base}.properties[labels].items.x-kubernetes-validations[0].rule: Forbidden: "
        "unbounded estimated cost: "
        f"the rule runs once per element of {base}.properties[labels], which has no maxItems/maxProperties",
    ]


def test_cost_check_follows_field_references_and_macro_variables() -> None:
    schema = {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "maxItems": 3,
                "items": {"type": "object", "properties": {"n": {"type": "string"}}},
            },
        },
        "x-kubernetes-validations": [{"rule": "self.items.all(i, i.n.matches('^a') && has(i.typo))"}],
    }
    problems = cost_check(_crd(schema))
    assert [p.split(": ", 1)[1] for p in problems] == [
        "Invalid value: \"self.items.all(i, i.n.matches('^a') && has(i.typo))\": compilation failed: "
        "undefined field 'typo'",
        "Forbidden: unbounded estimated cost: matches() is applied to self.items[*].n, a string without maxLength",
    ]


def test_cost_check_reports_rule_definition_errors() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 5},
            "list": {
                "type": "array",
                "maxItems": 2,
                "items": {
                    "type": "object",
                    "properties": {"a": {"type": "string"}},
                    "x-kubernetes-validations": [{"rule": "self.a == oldSelf.a"}],
                },
            },
        },
        "x-kubernetes-validations": [
            {"rule": "self.name ==", "message": "broken"},
            {"rule": "self.name != 'x'", "optionalOldSelf": True, "reason": "Nope", "fieldPath": ".nope"},
            {"rule": "true", "messageExpression": "'a' +"},
        ],
    }
    kinds = [p.split(": ")[0].rsplit(".", 1)[-1] + ": " + p.split(": ")[1] for p in cost_check(_crd(schema))]
    assert kinds == [
        "rule: Invalid value",  # does not compile
        "optionalOldSelf: Forbidden",
        "reason: Unsupported value",
        "fieldPath: Invalid value",
        "messageExpression: Invalid value",
        "rule: Invalid value",  # oldSelf inside an atomic list
    ]


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("name", "escaped"),
    [
        ("state", "state"),
        ("dump-period", "dump__dash__period"),
        ("a.b/c", "a__dot__b__slash__c"),
        ("x__y", "x__underscores__y"),
        ("namespace", "__namespace__"),
        ("1abc", None),
        ("a b", None),
    ],
)
def test_cel_escape(name: str, escaped: str | None) -> None:
    assert cel_escape(name) == escaped


@pytest.mark.parametrize(
    ("number", "text"),
    [(1.0, "1"), (0.5, "0.5"), (-2.25, "-2.25"), (123456.0, "123456"), (1e6, "1e+06"), (1.5e-5, "1.5e-05")],
)
def test_go_float(number: float, text: str) -> None:
    assert go_float(number) == text


def test_unknown_version_is_an_error() -> None:
    with pytest.raises(ValueError, match="no version 'v9'"):
        validate(CRD, task(), version="v9")


# --------------------------------------------------------------------------- structural_check


def test_structural_check_accepts_the_obsdumptask_crd() -> None:
    assert structural_check(CRD) == []


def test_structural_check_reports_what_the_server_rejects() -> None:
    schema = {
        "type": "object",
        "properties": {
            "optional": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "ref": {"$ref": "#/$defs/Target"},
            "list": {"type": "array"},
            "mixed": {
                "type": "object",
                "properties": {"x": {"type": "string"}},
                "additionalProperties": {"type": "string"},
            },
            "period": {"type": "integer", "minimum": 1, "default": 0},
            "target": {"type": "object", "default": {"zz": 1}, "properties": {"x": {"type": "string"}}},
            "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
            "keyed": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "items": {"type": "object", "properties": {"name": {"type": "string"}}},
            },
        },
    }
    base = "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties"
    assert [p.removeprefix(base) for p in structural_check(_crd(schema))] == [
        "[optional].type: Required value: must not be empty for specified object fields",
        "[optional].anyOf[0].type: Forbidden: must be empty to be structural",
        "[optional].anyOf[1].type: Forbidden: must be empty to be structural",
        "[ref].type: Required value: must not be empty for specified object fields",
        "[ref].$ref: Forbidden: $ref is not supported",
        "[list].items: Required value: must be specified",
        "[mixed].additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive",
        "[period].default: Invalid value: 0: default in body should be greater than or equal to 1",
        '[target].default: Invalid value: {"zz":1}: must not have unknown fields',
        '[keyed].x-kubernetes-list-map-keys: Invalid value: "name": must be required or have a default value',
    ]
