#![allow(clippy::unwrap_used, reason = "tests fail by panicking")]

use super::*;

#[test]
fn requests_round_trip() {
    for command in [
        Command::Status,
        Command::Up { name: "a".into() },
        Command::Down { name: "a".into() },
        Command::Rekey {
            name: "a".into(),
            ike: true,
            spi: None,
        },
        Command::Rekey {
            name: "a".into(),
            ike: false,
            spi: Some(0xc0ffee),
        },
        Command::Liveness { name: "a".into() },
        Command::AddChild { name: "a".into() },
        Command::DeleteChild {
            name: "a".into(),
            spi: 7,
        },
        Command::Reload,
    ] {
        let line = serde_json::to_vec(&Request {
            version: PROTOCOL_VERSION,
            command: command.clone(),
        })
        .unwrap();
        assert_eq!(parse_request(&line), Ok(command));
    }
    // `ike` is optional.
    let c = parse_request(br#"{"version":1,"command":{"rekey":{"name":"x"}}}"#).unwrap();
    assert_eq!(
        c,
        Command::Rekey {
            name: "x".into(),
            ike: false,
            spi: None
        }
    );
}

fn kind(r: Result<Command, Response>) -> ErrorKind {
    match r {
        Err(Response {
            outcome: Outcome::Error(e),
            ..
        }) => e.kind,
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_requests_get_typed_errors() {
    assert_eq!(
        kind(parse_request(br#"{"version":2,"command":"status"}"#)),
        ErrorKind::UnsupportedVersion
    );
    for bad in [
        &b""[..],
        b"{",
        b"[]",
        b"\xff\xfe",
        br#"{"command":"status"}"#,
        br#"{"version":1}"#,
        br#"{"version":1,"command":"explode"}"#,
        br#"{"version":1,"command":{"up":{}}}"#,
        br#"{"version":1,"command":{"up":{"name":"a","extra":1}}}"#,
        br#"{"version":1,"command":"status","more":true}"#,
        br#"{"version":"1","command":"status"}"#,
    ] {
        assert_eq!(kind(parse_request(bad)), ErrorKind::BadRequest, "{bad:?}");
    }
}

#[test]
fn responses_round_trip() {
    let r = Response::ok(Reply::Reloaded(ReloadSummary {
        added: vec!["a".into()],
        ..ReloadSummary::default()
    }));
    let line = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), r);
    let e = Response::error(ErrorKind::UnknownConnection, "no connection \"x\"");
    let line = serde_json::to_string(&e).unwrap();
    assert!(line.contains("unknown-connection"), "{line}");
    assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), e);
}
