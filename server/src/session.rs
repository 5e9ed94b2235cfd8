//! Flight's session options (`SetSessionOptions`, `GetSessionOptions`, `CloseSession`).
//!
//! The Arrow Flight SQL JDBC driver sets the `catalog` option when a URL names
//! one (`?catalog=trendflow`) and refuses to connect when the server does not
//! answer. trendflow keeps no per-client state: the options it accepts are the
//! ones every query already runs with (the session's default catalog and
//! schema), and any other value is refused by name. arrow-flight 59 has no
//! types for these actions, so the messages of `Flight.proto` are declared here.

use std::collections::HashMap;

use prost::Message;

/// Action type of setting options.
pub const SET_SESSION_OPTIONS: &str = "SetSessionOptions";
/// Action type of reading the options back.
pub const GET_SESSION_OPTIONS: &str = "GetSessionOptions";
/// Action type of ending a session.
pub const CLOSE_SESSION: &str = "CloseSession";

/// `SessionOptionValue` of Flight.proto.
#[derive(Clone, PartialEq, Message)]
pub struct SessionOptionValue {
    #[prost(oneof = "OptionValue", tags = "1, 2, 3, 4, 5")]
    pub option_value: Option<OptionValue>,
}

/// The value of a session option.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum OptionValue {
    #[prost(string, tag = "1")]
    String(String),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(sfixed64, tag = "3")]
    Int64(i64),
    #[prost(double, tag = "4")]
    Double(f64),
    #[prost(message, tag = "5")]
    StringList(StringListValue),
}

/// `SessionOptionValue.StringListValue` of Flight.proto.
#[derive(Clone, PartialEq, Message)]
pub struct StringListValue {
    #[prost(string, repeated, tag = "1")]
    pub values: Vec<String>,
}

/// `SetSessionOptionsRequest` of Flight.proto.
#[derive(Clone, PartialEq, Message)]
pub struct SetSessionOptionsRequest {
    #[prost(map = "string, message", tag = "1")]
    pub session_options: HashMap<String, SessionOptionValue>,
}

/// `SetSessionOptionsResult` of Flight.proto: the options refused, by name.
#[derive(Clone, PartialEq, Message)]
pub struct SetSessionOptionsResult {
    #[prost(map = "string, message", tag = "1")]
    pub errors: HashMap<String, SetSessionOptionsError>,
}

/// `SetSessionOptionsResult.Error` of Flight.proto.
#[derive(Clone, PartialEq, Message)]
pub struct SetSessionOptionsError {
    /// `ErrorValue`: 1 invalid name, 2 invalid value.
    #[prost(int32, tag = "1")]
    pub value: i32,
}

/// `GetSessionOptionsResult` of Flight.proto.
#[derive(Clone, PartialEq, Message)]
pub struct GetSessionOptionsResult {
    #[prost(map = "string, message", tag = "1")]
    pub session_options: HashMap<String, SessionOptionValue>,
}

/// `CloseSessionResult` of Flight.proto.
#[derive(Clone, PartialEq, Message)]
pub struct CloseSessionResult {
    /// `Status`: 1 closed.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

const INVALID_NAME: i32 = 1;
const INVALID_VALUE: i32 = 2;
const CLOSED: i32 = 1;

/// The options every query runs with: `catalog` and `schema`, the session's defaults.
pub fn current_options(catalog: &str, schema: &str) -> HashMap<String, SessionOptionValue> {
    let text = |value: &str| SessionOptionValue { option_value: Some(OptionValue::String(value.into())) };
    HashMap::from([("catalog".to_string(), text(catalog)), ("schema".to_string(), text(schema))])
}

/// Answers a `SetSessionOptions` body: options equal to the current ones are accepted
/// (nothing changes), others are refused, unknown names as such.
pub fn set_options(body: &[u8], current: &HashMap<String, SessionOptionValue>) -> Result<Vec<u8>, prost::DecodeError> {
    let request = SetSessionOptionsRequest::decode(body)?;
    let errors = request
        .session_options
        .into_iter()
        .filter_map(|(name, value)| {
            let refusal = match current.get(&name) {
                None => INVALID_NAME,
                Some(now) if *now == value => return None,
                Some(_) => INVALID_VALUE,
            };
            Some((name, SetSessionOptionsError { value: refusal }))
        })
        .collect();
    Ok(SetSessionOptionsResult { errors }.encode_to_vec())
}

/// Answers `GetSessionOptions`.
pub fn get_options(current: HashMap<String, SessionOptionValue>) -> Vec<u8> {
    GetSessionOptionsResult { session_options: current }.encode_to_vec()
}

/// Answers `CloseSession`: there is no session state to drop, so it is closed at once.
pub fn close() -> Vec<u8> {
    CloseSessionResult { status: CLOSED }.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(options: &[(&str, &str)]) -> Vec<u8> {
        let session_options = options
            .iter()
            .map(|(name, value)| (name.to_string(), SessionOptionValue { option_value: Some(OptionValue::String(value.to_string())) }))
            .collect();
        SetSessionOptionsRequest { session_options }.encode_to_vec()
    }

    fn refusals(options: &[(&str, &str)]) -> HashMap<String, i32> {
        let answer = set_options(&request(options), &current_options("trendflow", "views")).unwrap();
        let result = SetSessionOptionsResult::decode(answer.as_slice()).unwrap();
        result.errors.into_iter().map(|(name, error)| (name, error.value)).collect()
    }

    #[test]
    fn the_current_catalog_is_accepted_and_others_refused_by_name() {
        assert!(refusals(&[("catalog", "trendflow"), ("schema", "views")]).is_empty());
        let refused = refusals(&[("catalog", "other"), ("timezone", "UTC")]);
        assert_eq!(refused, HashMap::from([("catalog".into(), INVALID_VALUE), ("timezone".into(), INVALID_NAME)]));
    }

    #[test]
    fn options_read_back_and_close_answers_closed() {
        let answer = GetSessionOptionsResult::decode(get_options(current_options("trendflow", "views")).as_slice());
        let options = answer.unwrap().session_options;
        assert_eq!(options["catalog"].option_value, Some(OptionValue::String("trendflow".into())));
        assert_eq!(CloseSessionResult::decode(close().as_slice()).unwrap().status, CLOSED);
    }

    #[test]
    fn a_body_that_is_no_request_is_an_error() {
        assert!(set_options(&[0xff, 0xff], &current_options("trendflow", "views")).is_err());
    }
}
