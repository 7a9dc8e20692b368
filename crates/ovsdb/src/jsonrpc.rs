//! JSON-RPC 1.0 messages as OVSDB uses them (RFC 7047 §4): requests,
//! notifications (a request whose id is null) and responses.

use serde_json::{Value, json};

use crate::error::{Error, excerpt};

/// One JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request: it needs a response with the same id.
    Request {
        /// The method name.
        method: String,
        /// The parameters, an array.
        params: Vec<Value>,
        /// The id, any JSON value but null.
        id: Value,
    },
    /// A notification: a request with a null id, never answered.
    Notification {
        /// The method name.
        method: String,
        /// The parameters, an array.
        params: Vec<Value>,
    },
    /// A response to one of our requests.
    Response {
        /// The id of the request.
        id: Value,
        /// `Ok(result)`, or `Err(error)` when `error` is not null.
        result: Result<Value, Value>,
    },
}

impl Message {
    /// Reads a message from a JSON value (RFC 7047 §4: an object with
    /// `method`, `params` and `id`, or `result`, `error` and `id`).
    pub fn from_value(v: Value) -> Result<Self, Error> {
        let bad = |why: &str, v: &Value| Error::Protocol(format!("{why}: {}", excerpt(v)));
        let Value::Object(mut o) = v else {
            return Err(bad("a JSON-RPC message is not an object", &v));
        };
        let id = o.remove("id").unwrap_or(Value::Null);
        if let Some(method) = o.remove("method") {
            let Value::String(method) = method else {
                return Err(bad("a method that is not a string", &method));
            };
            let params = match o.remove("params") {
                Some(Value::Array(p)) => p,
                other => {
                    return Err(bad(
                        "params that are not an array",
                        &other.unwrap_or(Value::Null),
                    ));
                }
            };
            return Ok(if id.is_null() {
                Self::Notification { method, params }
            } else {
                Self::Request { method, params, id }
            });
        }
        // ovsdb-server 3.1 leaves "result" out of an error response:
        // {"id":1,"error":"unknown method"}.
        let (result, error) = (o.remove("result"), o.remove("error"));
        if result.is_none() && error.is_none() {
            return Err(Error::Protocol(
                "a JSON-RPC message with neither a method nor a result or an error".into(),
            ));
        }
        if id.is_null() {
            return Err(bad(
                "a response with a null id",
                result.as_ref().or(error.as_ref()).unwrap_or(&Value::Null),
            ));
        }
        let result = match error {
            Some(e) if !e.is_null() => Err(e),
            _ => Ok(result.unwrap_or(Value::Null)),
        };
        Ok(Self::Response { id, result })
    }

    /// The message as JSON.
    pub fn to_value(&self) -> Value {
        match self {
            Self::Request { method, params, id } => {
                json!({"method": method, "params": params, "id": id})
            }
            Self::Notification { method, params } => {
                json!({"method": method, "params": params, "id": null})
            }
            Self::Response { id, result } => match result {
                Ok(r) => json!({"result": r, "error": null, "id": id}),
                Err(e) => json!({"result": null, "error": e, "id": id}),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_ovsdb_server_sends() {
        let echo =
            Message::from_value(json!({"id": "echo", "method": "echo", "params": []})).unwrap();
        assert_eq!(
            echo,
            Message::Request {
                method: "echo".into(),
                params: vec![],
                id: json!("echo")
            }
        );
        let upd =
            Message::from_value(json!({"id": null, "method": "update2", "params": ["m", {}]}))
                .unwrap();
        assert!(matches!(upd, Message::Notification { ref method, .. } if method == "update2"));
        let ok = Message::from_value(json!({"id": 0, "result": ["Open_vSwitch"], "error": null}))
            .unwrap();
        assert_eq!(
            ok,
            Message::Response {
                id: json!(0),
                result: Ok(json!(["Open_vSwitch"]))
            }
        );
        let err = Message::from_value(json!({"id": 1, "result": null, "error": "unknown method"}))
            .unwrap();
        assert_eq!(
            err,
            Message::Response {
                id: json!(1),
                result: Err(json!("unknown method"))
            }
        );
        // As ovsdb-server 3.1 answers an unknown method: no "result".
        let unknown = Message::from_value(json!({"id": 1, "error": "unknown method"})).unwrap();
        assert_eq!(unknown, err);
        for m in [echo, upd, ok, err] {
            assert_eq!(Message::from_value(m.to_value()).unwrap(), m);
        }
    }

    #[test]
    fn refuses_what_is_not_json_rpc() {
        for bad in [
            json!([1]),
            json!({"method": 5, "params": [], "id": 1}),
            json!({"method": "echo", "params": {}, "id": 1}),
            json!({"method": "echo", "id": 1}),
            json!({"id": 1}),
            json!({"result": 1, "error": null, "id": null}),
            json!({}),
        ] {
            assert!(Message::from_value(bad.clone()).is_err(), "{bad}");
        }
    }
}
