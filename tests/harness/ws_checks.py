"""The checks of ComfyUI's ``/ws`` on AWS in the SAM template (lambdas/template.yaml): the WebSocket API's routes
reach lambdas/comfy_ws.py, API Gateway may invoke it on this API only, the stage the URL output, the notifier's
endpoint and its ``execute-api:ManageConnections`` grant all name the same API and stage, the notifier hears the
results topic, and the registry's S3 grants stop at lambdas/comfy_ws.py's prefix. Each check returns the problems
it finds, so tests run it on the real template and on broken copies (tests/infra/test_template_rules.py).
"""

from __future__ import annotations

import json
from typing import Any

from lambdas.authorizer import SSM_CONFIG
from lambdas.comfy_ws import PREFIX
from lambdas.comfy_ws_notify import ENDPOINT_VARIABLE
from runtime.storage import aws
from tests.harness.infra_docs import EXAMPLE_STACK, Doc, resolve

#: The stage's name: ComfyUI's clients open ``{server}/ws``, so the stage is the path they already write.
STAGE = "ws"
CONNECT_HANDLER = "lambdas.comfy_ws.handler"
NOTIFY_HANDLER = "lambdas.comfy_ws_notify.handler"
ROUTES = {"$connect", "$disconnect", "$default"}
#: What each function may do (tests/harness/template_checks.py FUNCTION_ACTIONS): $connect reads the keys and
#: registers, $disconnect reads and deletes; the notifier reads the prompt, its status and the registry, posts.
WS_ACTIONS = {
    "ComfyWsFunction": {"ssm:GetParameter", "kms:Decrypt", "s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                        "s3:ListBucket"},
    "ComfyWsNotifyFunction": {"s3:GetObject", "s3:DeleteObject", "s3:ListBucket", "execute-api:ManageConnections"},
}


def http_api(transformed: Doc) -> tuple[Doc | None, list[Doc], list[str]]:
    """The HTTP API and its routes in the transformed template, ComfyUI's WebSocket API and routes left out; the
    problem when there is not exactly one HTTP API."""
    resources = transformed["Resources"]
    sockets = [{"Ref": name} for name, res in resources.items()
               if res["Type"] == "AWS::ApiGatewayV2::Api" and res["Properties"].get("ProtocolType") == "WEBSOCKET"]
    apis = [res for name, res in resources.items()
            if res["Type"] == "AWS::ApiGatewayV2::Api" and {"Ref": name} not in sockets]
    routes = [res for res in resources.values()
              if res["Type"] == "AWS::ApiGatewayV2::Route" and res["Properties"].get("ApiId") not in sockets]
    return (apis[0], routes, []) if len(apis) == 1 else (None, routes, [f"expected one HTTP API, found {len(apis)}"])


def _statements(props: Doc, tpl: Doc) -> list[Doc]:
    return [s for policy in props.get("Policies", []) for s in resolve(policy, tpl).get("Statement", [])]


def _actions(statement: Doc) -> list[str]:
    action = statement["Action"]
    return action if isinstance(action, list) else [action]


def _by_handler(tpl: Doc, handler: str) -> tuple[str, Doc] | None:
    found = [(name, res["Properties"]) for name, res in tpl["Resources"].items()
             if res["Type"] == "AWS::Serverless::Function" and res["Properties"].get("Handler") == handler]
    return found[0] if len(found) == 1 else None


def _api_id(tpl: Doc) -> str | None:
    apis = [name for name, res in tpl["Resources"].items() if res["Type"] == "AWS::ApiGatewayV2::Api"
            and res["Properties"].get("ProtocolType") == "WEBSOCKET"]
    return apis[0] if len(apis) == 1 else None


def check_routes(tpl: Doc, api: str, function: str) -> list[str]:
    """$connect, $disconnect and $default, each to an integration of the connect function; its permission."""
    resources, errors = tpl["Resources"], []
    routes = {res["Properties"]["RouteKey"]: res["Properties"] for res in resources.values()
              if res["Type"] == "AWS::ApiGatewayV2::Route" and res["Properties"].get("ApiId") == {"Ref": api}}
    if set(routes) != ROUTES:
        errors.append(f"the WebSocket API's routes are {sorted(routes)}, not {sorted(ROUTES)}")
    for key, route in sorted(routes.items()):
        target = json.dumps(route.get("Target"))
        integration = next((name for name in resources if f"integrations/${{{name}}}" in target), None)
        uri = json.dumps(resources.get(integration or "", {}).get("Properties", {}).get("IntegrationUri"))
        if integration is None or f"${{{function}.Arn}}" not in uri:
            errors.append(f"route {key} does not reach {function} ({CONNECT_HANDLER})")
    allowed = [res["Properties"] for res in resources.values() if res["Type"] == "AWS::Lambda::Permission"
               and res["Properties"].get("FunctionName") in ({"Ref": function}, {"Fn::GetAtt": [function, "Arn"]})
               and res["Properties"].get("Principal") == "apigateway.amazonaws.com"]
    if not allowed:
        errors.append(f"API Gateway may not invoke {function}: every connect would fail")
    for permission in allowed:
        if f"${{{api}}}/" not in json.dumps(permission.get("SourceArn")):
            errors.append(f"{function} may be invoked by any API, not only {api} ({permission.get('SourceArn')})")
    return errors


def check_stage(tpl: Doc, api: str, notifier: Doc) -> list[str]:
    """One auto-deployed stage named STAGE; the output's wss URL, the notifier's endpoint and its grant name it."""
    resources, errors = tpl["Resources"], []
    stages = [res["Properties"] for res in resources.values()
              if res["Type"] == "AWS::ApiGatewayV2::Stage" and res["Properties"].get("ApiId") == {"Ref": api}]
    if [(s.get("StageName"), s.get("AutoDeploy")) for s in stages] != [(STAGE, True)]:
        errors.append(f"the WebSocket API needs one auto-deployed stage {STAGE!r}: "
                      f"{[(s.get('StageName'), s.get('AutoDeploy')) for s in stages]}")
    host = f"${{{api}}}.execute-api.${{AWS::Region}}.${{AWS::URLSuffix}}/{STAGE}"
    url = tpl.get("Outputs", {}).get("ComfyWsUrl", {}).get("Value")
    if url != {"Fn::Sub": f"wss://{host}"}:
        errors.append(f"the ComfyWsUrl output is {url}, not wss://{host}")
    endpoint = notifier.get("Environment", {}).get("Variables", {}).get(ENDPOINT_VARIABLE)
    if endpoint != {"Fn::Sub": f"https://{host}"}:
        errors.append(f"the notifier's {ENDPOINT_VARIABLE} is {endpoint}, not https://{host}")
    arn = (f"arn:aws:execute-api:{EXAMPLE_STACK['AWS::Region']}:{EXAMPLE_STACK['AWS::AccountId']}:"
           f"{resolve({'Ref': api}, tpl)}/{STAGE}/POST/@connections/*")
    for statement in _statements(notifier, tpl):
        if "execute-api:ManageConnections" in _actions(statement) and statement.get("Resource") != arn:
            errors.append(f"the notifier may manage {statement.get('Resource')}, not only {arn}")
    return errors


def check_registry(tpl: Doc, functions: dict[str, Doc]) -> list[str]:
    """Writes and deletes of the registry stop at lambdas/comfy_ws.py's PREFIX; the connect function reads only
    the API keys parameter and outlasts its SSM call."""
    errors, bucket = [], resolve({"Fn::GetAtt": ["OutputBucket", "Arn"]}, tpl)
    for name, props in functions.items():
        for statement in _statements(props, tpl):
            writes = {"s3:PutObject", "s3:DeleteObject"} & set(_actions(statement))
            if writes and statement.get("Resource") != f"{bucket}/{PREFIX}*":
                errors.append(f"{name} may {sorted(writes)} on {statement.get('Resource')}, beyond {PREFIX}")
    connect = functions["connect"]
    parameter = resolve(connect.get("Environment", {}).get("Variables", {}).get("SPOTGEN_API_KEYS_PARAMETER"), tpl)
    arn = f"arn:aws:ssm:{EXAMPLE_STACK['AWS::Region']}:{EXAMPLE_STACK['AWS::AccountId']}:parameter{parameter}"
    for statement in _statements(connect, tpl):
        if "ssm:GetParameter" in _actions(statement) and statement.get("Resource") != arn:
            errors.append(f"the connect function may read {statement.get('Resource')}, not just {arn}")
    timeout = connect.get("Timeout", tpl["Globals"]["Function"].get("Timeout", 3))
    if timeout < aws.worst_case_s(SSM_CONFIG) + 2:
        errors.append(f"the connect function's Timeout ({timeout} s) does not outlast its SSM call")
    return errors


def check_comfy_ws(tpl: Doc) -> list[str]:
    api = _api_id(tpl)
    connect, notify = _by_handler(tpl, CONNECT_HANDLER), _by_handler(tpl, NOTIFY_HANDLER)
    if api is None or connect is None or notify is None:
        return [f"expected one WebSocket API ({api}), one {CONNECT_HANDLER} ({connect and connect[0]}) and one "
                f"{NOTIFY_HANDLER} ({notify and notify[0]})"]
    errors = check_routes(tpl, api, connect[0]) + check_stage(tpl, api, notify[1])
    errors += check_registry(tpl, {"connect": connect[1], "notify": notify[1]})
    events = [e["Properties"] for e in notify[1].get("Events", {}).values() if e["Type"] == "SNS"]
    if [e.get("Topic") for e in events] != [{"Ref": "ResultsTopic"}]:
        errors.append(f"the notifier must hear the results topic alone, not {[e.get('Topic') for e in events]}")
    elif events[0].get("FilterPolicy") != {"format": [{"exists": False}]}:
        errors.append(f"the notifier's subscription lets the sample's notifications in: "
                      f"{events[0].get('FilterPolicy')}")
    return errors


def broken(tpl: Doc, change: Any) -> Doc:
    """A deep copy of ``tpl`` with ``change(resources)`` applied."""
    copied = json.loads(json.dumps(tpl))
    change(copied["Resources"])
    return copied
