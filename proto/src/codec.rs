//! The codec every service of the API decodes its requests with: prost's, after one walk over
//! the request's wire bytes that refuses text no field needs.
//!
//! Why at the codec: PostgreSQL's `text` cannot hold NUL, and no id, reason or note needs any
//! other control character. Refused here, such a request is `INVALID_ARGUMENT` naming the field
//! (`lines[2].sku`) on either backend, before a handler, the writer or the database sees it —
//! for every string field of every request, nested or repeated, of unary and streaming calls
//! alike, with nothing to remember when a field is added.
//!
//! The walk reads the schema from the descriptor set that is compiled in anyway (for
//! reflection), so it follows the proto exactly. It only looks: bytes that are not valid
//! protobuf are left to prost's decoder, which refuses them as before.

use prost::Message;
use prost::encoding::{WireType, decode_key, decode_varint};
use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::LazyLock;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstEncoder};

/// The `google.rpc.ErrorInfo` domain of every status the API sends.
pub const ERROR_DOMAIN: &str = "coalition.v1";

/// The reason of a text field holding a control character.
pub const CONTROL_CHARACTER: &str = "CONTROL_CHARACTER";
/// The reason of a text field whose bytes are not UTF-8.
pub const NOT_UTF8: &str = "NOT_UTF8";

/// Nested messages deeper than this are left to prost (whose own limit refuses them).
const MAX_DEPTH: u32 = 32;

/// The first control character of `text` (Unicode category Cc: U+0000–U+001F, U+007F–U+009F)
/// and its position in characters, counted from 1.
pub fn control_character(text: &str) -> Option<(usize, char)> {
    text.chars()
        .enumerate()
        .find(|(_, c)| c.is_control())
        .map(|(i, c)| (i + 1, c))
}

/// The reason of a status this codec refused a request with, if it did.
pub fn refusal_reason(status: &Status) -> Option<&'static str> {
    use tonic_types::StatusExt;
    if status.code() != Code::InvalidArgument {
        return None;
    }
    let info = status.get_details_error_info()?;
    if info.domain != ERROR_DOMAIN {
        return None;
    }
    [CONTROL_CHARACTER, NOT_UTF8]
        .into_iter()
        .find(|r| *r == info.reason)
}

/// What a request's text was refused for, before it became a [`Status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRefused {
    /// The field as the proto names it, with indexes of repeated fields (`records[3].member_id`).
    pub field: String,
    /// [`CONTROL_CHARACTER`] or [`NOT_UTF8`].
    pub reason: &'static str,
    /// What is wrong, for a person.
    pub message: String,
}

impl TextRefused {
    /// The status the API answers with: `INVALID_ARGUMENT`, `ErrorInfo` and a field violation,
    /// as every other refused field.
    pub fn status(&self) -> Status {
        use tonic_types::{ErrorDetails, StatusExt};
        let mut details = ErrorDetails::new();
        details.set_error_info(self.reason, ERROR_DOMAIN, HashMap::new());
        details.add_bad_request_violation(self.field.clone(), self.message.clone());
        Status::with_error_details(
            Code::InvalidArgument,
            format!("{}: {}", self.field, self.message),
            details,
        )
    }
}

/// Refuses `text` if it holds a control character, naming `field` (and, for a file, the place).
pub fn check_text(field: impl FnOnce() -> String, text: &str) -> Result<(), TextRefused> {
    match control_character(text) {
        None => Ok(()),
        Some((at, c)) => Err(TextRefused {
            field: field(),
            reason: CONTROL_CHARACTER,
            message: format!(
                "holds a control character (U+{:04X}) at character {at}; ids, names, reasons and \
                 notes take printable text only",
                c as u32
            ),
        }),
    }
}

/// A field of a message, as the walk needs it.
#[derive(Debug)]
struct Field {
    name: String,
    repeated: bool,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Text,
    /// A nested message, by full name without the leading dot.
    Message(String),
    Other,
}

/// The API's messages (full name → field number → field) and the types its RPCs take.
struct Schema {
    messages: HashMap<String, HashMap<u32, Field>>,
    inputs: HashSet<String>,
}

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    use prost_types::field_descriptor_proto::{Label, Type};
    let mut schema = Schema {
        messages: HashMap::new(),
        inputs: HashSet::new(),
    };
    // Compiled in by the build: a failure to decode it is a broken build, and then no request
    // is checked (prost still decodes them) rather than every call failing.
    let Ok(set) = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET) else {
        return schema;
    };
    fn add(schema: &mut Schema, prefix: &str, messages: &[prost_types::DescriptorProto]) {
        for m in messages {
            let name = format!("{prefix}.{}", m.name());
            let fields = m
                .field
                .iter()
                .map(|f| {
                    let kind = match f.r#type() {
                        Type::String => Kind::Text,
                        Type::Message => {
                            Kind::Message(f.type_name().trim_start_matches('.').to_string())
                        }
                        _ => Kind::Other,
                    };
                    let field = Field {
                        name: f.name().to_string(),
                        repeated: f.label() == Label::Repeated,
                        kind,
                    };
                    (f.number() as u32, field)
                })
                .collect();
            add(schema, &name, &m.nested_type);
            schema.messages.insert(name, fields);
        }
    }
    for file in &set.file {
        add(&mut schema, file.package(), &file.message_type);
        for service in &file.service {
            for method in &service.method {
                let input = method.input_type().trim_start_matches('.').to_string();
                schema.inputs.insert(input);
            }
        }
    }
    schema
});

/// Where the walk is, rendered into a field path only when something is refused.
struct At<'a> {
    parent: Option<&'a At<'a>>,
    name: &'a str,
    index: Option<usize>,
}

impl At<'_> {
    fn render(&self) -> String {
        let mut parts = Vec::new();
        let mut at = Some(self);
        while let Some(a) = at {
            parts.push(match a.index {
                Some(i) => format!("{}[{i}]", a.name),
                None => a.name.to_string(),
            });
            at = a.parent;
        }
        parts.reverse();
        parts.join(".")
    }
}

/// Checks every string field of an encoded `message_type`, however deeply nested.
fn walk(
    message_type: &str,
    mut bytes: &[u8],
    at: Option<&At<'_>>,
    depth: u32,
) -> Result<(), TextRefused> {
    let Some(fields) = SCHEMA.messages.get(message_type) else {
        return Ok(());
    };
    if depth > MAX_DEPTH {
        return Ok(());
    }
    // Occurrences of each repeated field so far, for its index (allocates only if one is seen).
    let mut seen: Vec<(u32, usize)> = Vec::new();
    while !bytes.is_empty() {
        let Ok((number, wire_type)) = decode_key(&mut bytes) else {
            return Ok(());
        };
        let value = match wire_type {
            WireType::Varint => {
                if decode_varint(&mut bytes).is_err() {
                    return Ok(());
                }
                continue;
            }
            WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                let n = if wire_type == WireType::SixtyFourBit {
                    8
                } else {
                    4
                };
                let Some(rest) = bytes.get(n..) else {
                    return Ok(());
                };
                bytes = rest;
                continue;
            }
            WireType::LengthDelimited => {
                let Ok(len) = decode_varint(&mut bytes) else {
                    return Ok(());
                };
                let Some(len) = usize::try_from(len).ok().filter(|l| *l <= bytes.len()) else {
                    return Ok(());
                };
                let (value, rest) = bytes.split_at(len);
                bytes = rest;
                value
            }
            WireType::StartGroup | WireType::EndGroup => return Ok(()),
        };
        let Some(field) = fields.get(&number) else {
            continue;
        };
        let index = field
            .repeated
            .then(|| match seen.iter_mut().find(|(n, _)| *n == number) {
                Some((_, count)) => {
                    *count += 1;
                    *count - 1
                }
                None => {
                    seen.push((number, 1));
                    0
                }
            });
        let here = At {
            parent: at,
            name: &field.name,
            index,
        };
        match &field.kind {
            Kind::Text => match std::str::from_utf8(value) {
                Ok(text) => check_text(|| here.render(), text)?,
                Err(e) => {
                    return Err(TextRefused {
                        field: here.render(),
                        reason: NOT_UTF8,
                        message: format!("is not UTF-8 (byte {})", e.valid_up_to() + 1),
                    });
                }
            },
            Kind::Message(nested) => walk(nested, value, Some(&here), depth + 1)?,
            Kind::Other => {}
        }
    }
    Ok(())
}

/// Checks an encoded request of the API's type `full_name` (e.g. `coalition.v1.EarnRequest`);
/// other types (the API's answers) pass unchecked.
pub fn check_request(full_name: &str, bytes: &[u8]) -> Result<(), TextRefused> {
    if !SCHEMA.inputs.contains(full_name) {
        return Ok(());
    }
    walk(full_name, bytes, None, 0)
}

/// prost's codec, whose decoder refuses a request's control characters first.
#[derive(Debug, Clone)]
pub struct CheckedCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for CheckedCodec<T, U> {
    fn default() -> Self {
        CheckedCodec {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for CheckedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + prost::Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder {
            _message: PhantomData,
            buffer_settings: BufferSettings::default(),
        }
    }
}

/// Decodes `U` after [`check_request`].
#[derive(Debug, Clone)]
pub struct CheckedDecoder<U> {
    _message: PhantomData<U>,
    buffer_settings: BufferSettings,
}

impl<U: Message + prost::Name + Default> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use prost::bytes::Buf;
        let decoded = if buf.chunk().len() == buf.remaining() {
            check_request(&U::full_name(), buf.chunk()).map_err(|r| r.status())?;
            U::decode(buf)
        } else {
            // tonic hands a message over in one piece; should it not, check a copy.
            let whole = buf.copy_to_bytes(buf.remaining());
            check_request(&U::full_name(), &whole).map_err(|r| r.status())?;
            U::decode(whole)
        };
        // As prost's own codec: bytes that are not protobuf are INTERNAL (gRPC's rule).
        decoded
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.buffer_settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(m: &impl Message) -> Vec<u8> {
        m.encode_to_vec()
    }

    #[test]
    fn every_rpc_input_is_known_to_the_walk() {
        assert!(SCHEMA.inputs.len() > 30, "{} inputs", SCHEMA.inputs.len());
        for input in &SCHEMA.inputs {
            assert!(SCHEMA.messages.contains_key(input), "{input}");
        }
    }

    #[test]
    fn a_nul_is_refused_naming_the_field() {
        let r = crate::v1::GetBalanceRequest {
            member_id: "a\u{0}b".into(),
            ..Default::default()
        };
        let refused = check_request("coalition.v1.GetBalanceRequest", &encoded(&r)).unwrap_err();
        assert_eq!(refused.field, "member_id");
        assert_eq!(refused.reason, CONTROL_CHARACTER);
        assert!(refused.message.contains("U+0000"), "{}", refused.message);
        assert!(
            refused.message.contains("character 2"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn printable_text_passes_and_answers_are_not_checked() {
        let r = crate::v1::GetBalanceRequest {
            member_id: "mémbre-1 ✈".into(),
            ..Default::default()
        };
        check_request("coalition.v1.GetBalanceRequest", &encoded(&r)).unwrap();
        let answer = crate::v1::Balance {
            member_id: "a\u{1}".into(),
            ..Default::default()
        };
        check_request("coalition.v1.Balance", &encoded(&answer)).unwrap();
    }

    #[test]
    fn a_repeated_nested_field_is_named_with_its_index() {
        let ok = crate::v1::PartnerRecord {
            transaction_id: "t1".into(),
            ..Default::default()
        };
        let bad = crate::v1::PartnerRecord {
            transaction_id: "t2".into(),
            member_id: "m\u{7f}".into(),
            ..Default::default()
        };
        let r = crate::v1::PartnerRecords {
            cycle: "2026-01-01".into(),
            records: vec![ok.clone(), ok, bad],
        };
        let refused = check_request("coalition.v1.PartnerRecords", &encoded(&r)).unwrap_err();
        assert_eq!(refused.field, "records[2].member_id");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_refused_and_broken_protobuf_is_left_to_prost() {
        // Field 1 (member_id), length 2, bytes 0xff 0xfe.
        let refused =
            check_request("coalition.v1.GetBalanceRequest", &[0x0a, 2, 0xff, 0xfe]).unwrap_err();
        assert_eq!(refused.reason, NOT_UTF8);
        // A length beyond the end: not ours to judge.
        check_request("coalition.v1.GetBalanceRequest", &[0x0a, 9, b'a']).unwrap();
    }
}
