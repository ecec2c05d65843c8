//! Issue 31, point 1: text that PostgreSQL's `text` cannot hold (NUL) and that no id, reason or
//! note needs (other control characters) is `INVALID_ARGUMENT` naming the field, on both
//! backends, for every text field of every request of every service — and nothing of it reaches
//! the database or its error metrics.
//!
//! The table is the API itself: every RPC of the compiled descriptor set, every string field of
//! its request (nested and repeated ones too), sent as raw protobuf with the caller's own role.
//! Each row is sent twice: with the control character (refused, the field named) and with the
//! same text clean (anything but that refusal), so the refusal is the character's doing.

use coalition_tests::*;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};
use std::collections::HashMap;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Sends and receives protobuf bytes as they are.
#[derive(Default, Clone)]
struct Raw;

struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// One string field reachable from a request: its path as the daemon names it, and the bytes of
/// a request holding `text` there (every enclosing message holding just that field).
struct TextField {
    path: String,
    /// Field numbers from the request down to the string, with whether each is repeated.
    numbers: Vec<(u32, bool)>,
}

impl TextField {
    fn request(&self, text: &str) -> Vec<u8> {
        let mut bytes = Vec::new();
        let (&(last, _), outer) = self.numbers.split_last().expect("a field");
        prost::encoding::string::encode(last, &text.to_string(), &mut bytes);
        for &(number, _) in outer.iter().rev() {
            let mut wrapped = Vec::new();
            prost::encoding::bytes::encode(number, &bytes, &mut wrapped);
            bytes = wrapped;
        }
        bytes
    }
}

fn messages(set: &FileDescriptorSet) -> HashMap<String, DescriptorProto> {
    fn add(out: &mut HashMap<String, DescriptorProto>, prefix: &str, ms: &[DescriptorProto]) {
        for m in ms {
            let name = format!("{prefix}.{}", m.name());
            add(out, &name, &m.nested_type);
            out.insert(name, m.clone());
        }
    }
    let mut out = HashMap::new();
    for f in &set.file {
        add(&mut out, f.package(), &f.message_type);
    }
    out
}

/// Every string field of `message`, three levels deep at most (the API nests no deeper).
fn text_fields(
    all: &HashMap<String, DescriptorProto>,
    message: &str,
    path: &str,
    numbers: &[(u32, bool)],
    out: &mut Vec<TextField>,
) {
    if numbers.len() >= 3 {
        return;
    }
    let Some(m) = all.get(message) else { return };
    for f in &m.field {
        let repeated = f.label() == Label::Repeated;
        let name = if repeated {
            format!("{}[0]", f.name())
        } else {
            f.name().to_string()
        };
        let path = if path.is_empty() {
            name
        } else {
            format!("{path}.{name}")
        };
        let mut numbers = numbers.to_vec();
        numbers.push((f.number() as u32, repeated));
        match f.r#type() {
            Type::String => out.push(TextField { path, numbers }),
            Type::Message => text_fields(
                all,
                f.type_name().trim_start_matches('.'),
                &path,
                &numbers,
                out,
            ),
            _ => {}
        }
    }
}

/// The control characters tried, in turn: NUL first, then others of Unicode's category Cc.
const CONTROLS: [char; 6] = ['\u{0}', '\u{1}', '\u{7}', '\u{1b}', '\u{7f}', '\u{85}'];

backends!(every_text_field_of_every_request_refuses_control_characters);

async fn every_text_field_of_every_request_refuses_control_characters(b: Backend) {
    let t = TestDaemon::start(b).await;
    let set = FileDescriptorSet::decode(coalition_proto::FILE_DESCRIPTOR_SET).unwrap();
    let all = messages(&set);
    let pems = [
        ("PartnerService", t.partner_pem("skyways")),
        ("FinanceService", certs(&t, "finance")),
        ("OperatorService", certs(&t, "operator")),
        ("ProgrammeService", certs(&t, "programme")),
    ];
    let mut rows = 0;
    let mut rpcs = 0;
    for file in &set.file {
        for service in &file.service {
            let pem = &pems
                .iter()
                .find(|(s, _)| *s == service.name())
                .unwrap_or_else(|| panic!("a certificate for {}", service.name()))
                .1;
            let channel = coalitiond::client::connect(&t.addr, pem).await.unwrap();
            for method in &service.method {
                rpcs += 1;
                let mut fields = Vec::new();
                text_fields(
                    &all,
                    method.input_type().trim_start_matches('.'),
                    "",
                    &[],
                    &mut fields,
                );
                let path: http::uri::PathAndQuery =
                    format!("/{}.{}/{}", file.package(), service.name(), method.name())
                        .parse()
                        .unwrap();
                for field in fields {
                    let control = CONTROLS[rows % CONTROLS.len()];
                    rows += 1;
                    let call = |text: String| {
                        let mut grpc = tonic::client::Grpc::new(channel.clone());
                        let path = path.clone();
                        let body = field.request(&text);
                        let client_streaming = method.client_streaming();
                        let server_streaming = method.server_streaming();
                        async move {
                            grpc.ready().await.unwrap();
                            let one = tokio_stream::iter(vec![body.clone()]);
                            match (client_streaming, server_streaming) {
                                (false, false) => grpc
                                    .unary(tonic::Request::new(body), path, Raw)
                                    .await
                                    .map(|_| ()),
                                (true, false) => grpc
                                    .client_streaming(tonic::Request::new(one), path, Raw)
                                    .await
                                    .map(|_| ()),
                                (false, true) => {
                                    let mut s = grpc
                                        .server_streaming(tonic::Request::new(body), path, Raw)
                                        .await?
                                        .into_inner();
                                    while s.message().await?.is_some() {}
                                    Ok(())
                                }
                                (true, true) => {
                                    let mut s = grpc
                                        .streaming(tonic::Request::new(one), path, Raw)
                                        .await?
                                        .into_inner();
                                    while s.message().await?.is_some() {}
                                    Ok(())
                                }
                            }
                        }
                    };
                    let what = format!("{}/{} {}", service.name(), method.name(), field.path);
                    let err = call(format!("x{control}y"))
                        .await
                        .expect_err(&format!("{what} with U+{:04X}", control as u32));
                    assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
                    assert_eq!(reason(&err), "CONTROL_CHARACTER", "{what}: {err:?}");
                    assert!(
                        err.message().starts_with(&format!("{}:", field.path)),
                        "{what}: the message names the field: {}",
                        err.message()
                    );
                    {
                        use tonic_types::StatusExt;
                        let violations = err
                            .get_details_bad_request()
                            .map(|b| b.field_violations)
                            .unwrap_or_default();
                        assert!(
                            violations.iter().any(|v| v.field == field.path),
                            "{what}: a field violation names it: {violations:?}"
                        );
                    }
                    // The same text without the character is judged on its merits, whatever
                    // they are: never this refusal.
                    if let Err(e) = call("xy".into()).await {
                        assert_ne!(reason(&e), "CONTROL_CHARACTER", "{what} clean: {e:?}");
                        assert_ne!(e.code(), Code::Unavailable, "{what} clean: {e:?}");
                    }
                }
            }
        }
    }
    assert!(rpcs >= 50, "every RPC of the API: {rpcs}");
    assert!(rows >= 120, "every text field of every request: {rows}");
    // Nothing of it reached the database: no database error was counted.
    let metrics = t.metrics_text().await;
    for line in metrics.lines() {
        if line.starts_with("coalition_db_errors_total") {
            let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert_eq!(n, 0.0, "a database error was counted: {line}");
        }
    }
    t.assert_invariants().await;
}

fn certs(t: &TestDaemon, name: &str) -> coalitiond::client::ClientPem {
    let dir = t.config.ca_cert.parent().unwrap();
    coalitiond::client::ClientPem::from_dir(dir, name).unwrap()
}

backends!(a_reconciliation_file_line_with_a_control_character_is_refused_whole);

/// The file of `ReconcilePartnerFile` is bytes, not text: its lines are checked by the handler,
/// naming the line, and the last stored report stands.
async fn a_reconciliation_file_line_with_a_control_character_is_refused_whole(b: Backend) {
    let t = TestDaemon::start_with(b, |toml| {
        toml.replace("scheduler = true", "scheduler = false")
    })
    .await;
    let mut air = t.partner("skyways").await;
    air.earn(earn_bonus("a1", "m1", 500)).await.receipt();
    let day = t.config.cycles().cycle_of(t.clock.now()).unwrap();
    t.advance_to(t.config.cycles().close(day).unwrap() + 3_600_000_000);
    t.clear(day).await.unwrap();
    let mut fin = t.finance().await;
    let send = |data: &str| {
        tokio_stream::iter(vec![v1::PartnerFileChunk {
            cycle: day.to_string(),
            partner: "skyways".into(),
            data: data.as_bytes().to_vec(),
        }])
    };
    let header = "transaction_id,kind,member_id,points,purchase_amount\n";
    let r = fin
        .reconcile_partner_file(send(&format!("{header}a1,earn,m1,500,\n")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.matched, r.open_breaks), (1, 0));
    for control in CONTROLS {
        let file = format!("{header}a1,earn,m{control}1,500,\n");
        let err = fin.reconcile_partner_file(send(&file)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert_eq!(reason(&err), "CONTROL_CHARACTER", "{err:?}");
        assert!(err.message().contains("line 2"), "{}", err.message());
    }
    // The last report stands, and nothing reached the database's error metrics.
    let listed = fin
        .list_reconciliations(v1::ReconciliationsRequest {
            cycle: day.to_string(),
            partner: "skyways".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .reconciliations;
    assert_eq!((listed[0].matched, listed[0].open_breaks), (1, 0));
    assert!(
        !t.metrics_text()
            .await
            .lines()
            .any(|l| { l.starts_with("coalition_db_errors_total") && !l.ends_with(" 0") })
    );
}
