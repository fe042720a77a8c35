//! The MCP tools (on rmcp, the official Rust SDK). Requests return at once,
//! pending; the descriptions tell the agent that a human decides and to
//! poll `request_status`. No tool decides anything.

use super::request::Ask;
use super::Supervisor;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The server's name in the agent's MCP settings.
pub const SERVER_NAME: &str = "bottle";

const HUMAN: &str = "A human operator decides; the call returns at once with an id and status \
    `pending`. Poll `request_status` with that id every 10-30 seconds (it may take minutes), and \
    go on with other work meanwhile. Ask only for what the task needs and say why in `reason` \
    (at most 2048 bytes).";

const INSTRUCTIONS: &str = "This bottle's network policy is enforced by a proxy. When it refuses \
    something the task needs, ask the operator with request_egress, request_route or \
    request_capability and poll request_status. list_policy shows what is allowed now.";

/// One connection's tools: the bottle's supervisor and who is asking.
#[derive(Debug, Clone)]
pub struct Tools {
    supervisor: Arc<Supervisor>,
    peer: String,
}

impl Tools {
    pub fn new(supervisor: Arc<Supervisor>, peer: impl Into<String>) -> Self {
        Self {
            supervisor,
            peer: peer.into(),
        }
    }
}

fn schema(v: Value) -> Arc<serde_json::Map<String, Value>> {
    match v {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(serde_json::Map::new()),
    }
}

fn reason_prop() -> Value {
    json!({"type": "string", "description": "Why the task needs it (shown to the human; at most 2048 bytes)."})
}

/// The tools, as listed to the agent.
pub fn tools() -> Vec<Tool> {
    vec![
        Tool::new(
            "request_egress",
            format!(
                "Ask the operator to let this bottle reach a host the proxy refuses (optionally \
                 only one port, some methods or path prefixes). {HUMAN} Once approved, the proxy \
                 allows it at once (until the approval expires)."
            ),
            schema(json!({
                "type": "object",
                "properties": {
                    "host": {"type": "string", "description": "Host name, e.g. api.example.com or *.example.com"},
                    "port": {"type": "integer", "minimum": 1, "maximum": 65535, "description": "Port, if not one already allowed"},
                    "methods": {"type": "array", "items": {"type": "string"}, "description": "Only these HTTP methods (e.g. GET)"},
                    "paths": {"type": "array", "items": {"type": "string"}, "description": "Only these path prefixes (e.g. /v1/)"},
                    "reason": reason_prop(),
                },
                "required": ["host", "reason"],
            })),
        ),
        Tool::new(
            "request_route",
            format!(
                "Ask the operator to attach a credential they hold to requests to a host (an \
                 egress route: the proxy injects it; you never see it). {HUMAN}"
            ),
            schema(json!({
                "type": "object",
                "properties": {"host": {"type": "string"}, "reason": reason_prop()},
                "required": ["host", "reason"],
            })),
        ),
        Tool::new(
            "request_capability",
            format!(
                "Ask the operator for something the bottle lacks, e.g. a package the image does \
                 not have. {HUMAN}"
            ),
            schema(json!({
                "type": "object",
                "properties": {"name": {"type": "string", "description": "What is needed, e.g. `jq`"}, "reason": reason_prop()},
                "required": ["name", "reason"],
            })),
        ),
        Tool::new(
            "list_policy",
            "Show what this bottle may reach now: allowed hosts and ports, method/path rules, \
             hosts with credential routes (never the credentials), git remotes and approved grants.",
            schema(json!({"type": "object", "properties": {}})),
        ),
        Tool::new(
            "request_status",
            "The state of a request filed with request_egress, request_route or \
             request_capability: pending, approved or rejected (with the operator's note).",
            schema(json!({
                "type": "object",
                "properties": {"id": {"type": "string", "description": "The id a request tool returned"}},
                "required": ["id"],
            })),
        ),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EgressArgs {
    host: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteArgs {
    host: String,
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CapabilityArgs {
    name: String,
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusArgs {
    id: String,
}

fn args<T: serde::de::DeserializeOwned>(
    tool: &str,
    arguments: Option<serde_json::Map<String, Value>>,
) -> Result<T, String> {
    serde_json::from_value(Value::Object(arguments.unwrap_or_default()))
        .map_err(|e| format!("bad arguments for {tool}: {e}"))
}

impl Tools {
    /// Run one tool: `Ok` is the result object, `Err` the text of a tool error.
    pub fn call(
        &self,
        name: &str,
        arguments: Option<serde_json::Map<String, Value>>,
    ) -> Result<Value, String> {
        let file = |ask: Ask, reason: &str| -> Result<Value, String> {
            let r = self
                .supervisor
                .submit(ask, reason, &self.peer)
                .map_err(|e| e.to_string())?;
            Ok(json!({
                "id": r.id,
                "status": r.status.as_str(),
                "next": "A human decides. Poll request_status with this id every 10-30 seconds.",
            }))
        };
        match name {
            "request_egress" => {
                let a: EgressArgs = args(name, arguments)?;
                file(
                    Ask::RequestEgress {
                        host: a.host,
                        port: a.port,
                        methods: a.methods,
                        paths: a.paths,
                    },
                    &a.reason,
                )
            }
            "request_route" => {
                let a: RouteArgs = args(name, arguments)?;
                file(Ask::RequestRoute { host: a.host }, &a.reason)
            }
            "request_capability" => {
                let a: CapabilityArgs = args(name, arguments)?;
                file(Ask::RequestCapability { name: a.name }, &a.reason)
            }
            "list_policy" => Ok(self.supervisor.policy_view()),
            "request_status" => {
                let a: StatusArgs = args(name, arguments)?;
                self.supervisor
                    .status(&a.id)
                    .map(|r| r.for_agent())
                    .map_err(|e| e.to_string())
            }
            other => Err(format!(
                "no tool `{other}`; the tools are request_egress, request_route, \
                 request_capability, list_policy and request_status"
            )),
        }
    }
}

impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(SERVER_NAME, env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let me = self.clone();
        let name = request.name.to_string();
        // Filing touches the disk: off the async workers.
        let result = tokio::task::spawn_blocking(move || me.call(&name, request.arguments))
            .await
            .unwrap_or_else(|_| Err("the tool failed; try again".to_string()));
        Ok(match result {
            Ok(value) => CallToolResult::structured(value),
            Err(text) => CallToolResult::error(vec![ContentBlock::text(text)]),
        }
        .into())
    }
}
