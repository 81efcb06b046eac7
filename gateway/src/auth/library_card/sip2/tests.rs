//! Codec fixtures (checksums computed independently, with pysip2's `calculate_checksum`),
//! round-trip and no-panic properties, and the acceptance rule.

use jiff::civil::date;
use proptest::prelude::*;

use super::codec::*;
use super::{Sip2Error, Sip2Verdict, verdict};

const KOHA_64: &[u8] = b"64              00020240101    120000000000000000000000000000\
AOhylte|AA23456789|AEOla Nordmann|BZ0005|CA0010|CB0020|BLY|CQY|PB20050315|AQNO-2390700|\
AFWelcome|AY1AZD705\r";

fn decode_64(bytes: &[u8], encoding: Encoding) -> PatronInformationResponse {
    match decode(bytes, encoding).unwrap().message {
        Message::PatronInformationResponse(r) => r,
        other => panic!("expected 64, got {other:?}"),
    }
}

#[test]
fn decodes_a_64_with_extensions_and_ignores_bz_ca_cb() {
    let frame = decode(KOHA_64, Encoding::Utf8).unwrap();
    assert_eq!(
        frame.error_detection,
        Some(ErrorDetection { sequence: Some(1) })
    );
    let Message::PatronInformationResponse(r) = frame.message else {
        panic!("not a 64");
    };
    assert_eq!(r.patron_status, PatronStatus::default());
    assert_eq!(r.transaction_date.as_str(), "20240101    120000");
    assert_eq!(r.counts, [Some(0); 6]);
    assert_eq!(r.institution_id, "hylte");
    assert_eq!(r.patron_id, "23456789");
    assert_eq!(r.personal_name, "Ola Nordmann");
    assert_eq!(r.valid_patron, Some(true));
    assert_eq!(r.valid_patron_password, Some(true));
    assert_eq!(r.birth_date, Some(date(2005, 3, 15)));
    assert_eq!(r.home_library.as_deref(), Some("NO-2390700"));
    assert_eq!(r.screen_messages, ["Welcome"]);
}

#[test]
fn debug_of_a_64_hides_the_person() {
    let r = decode_64(KOHA_64, Encoding::Utf8);
    let shown = format!("{r:?}");
    for secret in ["23456789", "Ola", "2005", "Welcome"] {
        assert!(!shown.contains(secret), "{secret} leaked: {shown}");
    }
}

#[test]
fn tolerates_crlf_lf_and_no_terminator() {
    let body = &KOHA_64[..KOHA_64.len() - 1];
    for ending in [&b"\r\n"[..], b"\n", b""] {
        let bytes = [body, ending].concat();
        assert_eq!(decode_64(&bytes, Encoding::Utf8).patron_id, "23456789");
    }
}

#[test]
fn decodes_latin1_names() {
    let bytes = b"64              00020240101    120000000000000000000000000000\
AOhylte|AA23456789|AE\xC5se \xD8vreb\xF8|BLY|CQY|AY2AZE54C\r";
    assert_eq!(
        decode_64(bytes, Encoding::Latin1).personal_name,
        "Åse Øvrebø"
    );
    assert_eq!(
        decode(bytes, Encoding::Utf8),
        Err(CodecError::InvalidText {
            field: "AE",
            encoding: Encoding::Utf8
        })
    );
}

#[test]
fn encodes_latin1_and_refuses_what_it_cannot_represent() {
    let mut r = decode_64(KOHA_64, Encoding::Utf8);
    r.personal_name = "Åse".to_owned();
    let frame = Frame {
        message: Message::PatronInformationResponse(r.clone()),
        error_detection: None,
    };
    let bytes = encode(&frame, Encoding::Latin1).unwrap();
    assert!(bytes.windows(4).any(|w| w == b"AE\xC5s"));
    r.personal_name = "Łukasz".to_owned();
    let frame = Frame {
        message: Message::PatronInformationResponse(r),
        error_detection: None,
    };
    assert_eq!(
        encode(&frame, Encoding::Latin1),
        Err(CodecError::Unrepresentable {
            field: "AE",
            encoding: Encoding::Latin1
        })
    );
}

#[test]
fn login_response_fixture() {
    let frame = decode(b"941AY0AZFDFD\r", Encoding::Utf8).unwrap();
    assert_eq!(frame.message, Message::LoginResponse { ok: true });
    assert_eq!(
        encode(&frame, Encoding::Utf8).unwrap(),
        b"941AY0AZFDFD\r".to_vec()
    );
}

#[test]
fn encodes_93_and_63_byte_for_byte() {
    let login = Frame {
        message: Message::Login(Login {
            uid_algorithm: b'0',
            pwd_algorithm: b'0',
            user: "user".into(),
            password: "pass".into(),
            location: Some("loc".into()),
        }),
        error_detection: Some(ErrorDetection { sequence: Some(0) }),
    };
    assert_eq!(
        encode(&login, Encoding::Utf8).unwrap(),
        b"9300CNuser|COpass|CPloc|AY0AZF5F1\r".to_vec()
    );
    let patron = Frame {
        message: Message::PatronInformation(PatronInformation {
            language: 0,
            transaction_date: SipDateTime::from_civil(date(2024, 1, 1).at(12, 0, 0, 0)),
            summary: [false; 10],
            institution_id: "hylte".into(),
            patron_id: "23456789".into(),
            terminal_password: None,
            patron_password: Some("secret".into()),
        }),
        error_detection: Some(ErrorDetection { sequence: Some(3) }),
    };
    assert_eq!(
        encode(&patron, Encoding::Utf8).unwrap(),
        b"6300020240101    120000          AOhylte|AA23456789|ADsecret|AY3AZEFCF\r".to_vec()
    );
    assert!(!format!("{patron:?}").contains("secret"));
    assert!(!format!("{login:?}").contains("pass\""));
}

#[test]
fn refuses_field_injection_on_encode() {
    for pin in ["12|AQevil", "12\rAQevil", "12\nx", "12\0"] {
        let frame = Frame {
            message: Message::PatronInformation(PatronInformation {
                language: 0,
                transaction_date: SipDateTime::parse("20240101    120000").unwrap(),
                summary: [false; 10],
                institution_id: "hylte".into(),
                patron_id: "1".into(),
                terminal_password: None,
                patron_password: Some(pin.into()),
            }),
            error_detection: None,
        };
        assert_eq!(
            encode(&frame, Encoding::Utf8),
            Err(CodecError::ForbiddenCharacter { field: "AD" })
        );
    }
}

#[test]
fn typed_errors_for_broken_frames() {
    let mut bad_sum = KOHA_64.to_vec();
    let n = bad_sum.len();
    bad_sum[n - 2] = b'6'; // D705 → D706
    assert_eq!(
        decode(&bad_sum, Encoding::Utf8),
        Err(CodecError::BadChecksum)
    );
    assert_eq!(
        decode(b"XX123", Encoding::Utf8),
        Err(CodecError::UnknownMessage(MessageId(*b"XX")))
    );
    assert_eq!(
        decode(b"64    ", Encoding::Utf8),
        Err(CodecError::Truncated {
            message: "64",
            field: "patron status"
        })
    );
    assert_eq!(
        decode(b"64XXXXXXXXXXXXXX", Encoding::Utf8),
        Err(CodecError::BadFixedField {
            message: "64",
            field: "patron status"
        })
    );
    assert_eq!(decode(b"\r", Encoding::Utf8), Err(CodecError::Empty));
    assert_eq!(
        decode(b"94\r1\r", Encoding::Utf8),
        Err(CodecError::ControlCharacter)
    );
    let no_aa = b"64              00020240101    120000000000000000000000000000AOhylte|BLY|";
    assert_eq!(
        decode(no_aa, Encoding::Utf8),
        Err(CodecError::MissingField {
            message: "64",
            field: "AA"
        })
    );
    let bad_pb = b"64              00020240101    120000000000000000000000000000AA1|PB2005-03-15|";
    assert_eq!(
        decode(bad_pb, Encoding::Utf8),
        Err(CodecError::BadField { field: "PB" })
    );
    let twice = b"64              00020240101    120000000000000000000000000000AA1|AA2|";
    assert_eq!(
        decode(twice, Encoding::Utf8),
        Err(CodecError::DuplicateField { field: "AA" })
    );
}

#[test]
fn last_field_may_lack_its_separator() {
    let bytes = b"64              00020240101    120000000000000000000000000000AA1|BLY|CQY";
    let r = decode_64(bytes, Encoding::Utf8);
    assert_eq!(r.valid_patron_password, Some(true));
}

#[test]
fn take_frame_splits_on_cr_crlf_and_lf() {
    let mut buf = b"941\r\n940\n\r941\r99".to_vec();
    assert_eq!(take_frame(&mut buf).unwrap().unwrap(), b"941");
    assert_eq!(take_frame(&mut buf).unwrap().unwrap(), b"940");
    assert_eq!(take_frame(&mut buf).unwrap().unwrap(), b"941");
    assert_eq!(take_frame(&mut buf).unwrap(), None);
    assert_eq!(buf, b"99");
    let mut huge = vec![b'6'; MAX_FRAME_LEN + 1];
    assert_eq!(take_frame(&mut huge), Err(CodecError::TooLong));
}

fn response(bl: Option<bool>, cq: Option<bool>, status: &[usize]) -> PatronInformationResponse {
    let mut r = decode_64(KOHA_64, Encoding::Utf8);
    r.valid_patron = bl;
    r.valid_patron_password = cq;
    for &i in status {
        r.patron_status.0[i] = true;
    }
    r
}

#[test]
fn acceptance_rule() {
    let ok = response(Some(true), Some(true), &[]);
    assert_eq!(
        verdict(&ok, "23456789").unwrap(),
        Sip2Verdict::Accepted {
            birth_date: Some(date(2005, 3, 15)),
            home_library: Some("NO-2390700".into())
        }
    );
    let wrong_pin = response(Some(true), Some(false), &[PatronStatus::CARD_REPORTED_LOST]);
    assert_eq!(
        verdict(&wrong_pin, "23456789").unwrap(),
        Sip2Verdict::WrongCardOrPin
    );
    let no_card = response(Some(false), None, &[]);
    assert_eq!(
        verdict(&no_card, "23456789").unwrap(),
        Sip2Verdict::WrongCardOrPin
    );
    let lost = response(
        Some(true),
        Some(true),
        &[
            PatronStatus::CARD_REPORTED_LOST,
            PatronStatus::CHARGE_PRIVILEGES_DENIED,
        ],
    );
    assert_eq!(
        verdict(&lost, "23456789").unwrap(),
        Sip2Verdict::Blocked { lost: true }
    );
    let denied = response(
        Some(true),
        Some(true),
        &[PatronStatus::CHARGE_PRIVILEGES_DENIED],
    );
    assert_eq!(
        verdict(&denied, "23456789").unwrap(),
        Sip2Verdict::Blocked { lost: false }
    );
    // Other flags (fines, overdue items) do not block a login to e-resources.
    let fines = response(
        Some(true),
        Some(true),
        &[
            PatronStatus::EXCESSIVE_OUTSTANDING_FINES,
            PatronStatus::HOLD_PRIVILEGES_DENIED,
        ],
    );
    assert!(matches!(
        verdict(&fines, "23456789").unwrap(),
        Sip2Verdict::Accepted { .. }
    ));
    assert!(matches!(
        verdict(&response(Some(true), None, &[]), "23456789"),
        Err(Sip2Error::Unvalidated)
    ));
    assert!(matches!(
        verdict(&ok, "99999999"),
        Err(Sip2Error::CardMismatch)
    ));
    assert!(!format!("{:?}", verdict(&ok, "23456789").unwrap()).contains("2005"));
}

fn text(latin1: bool) -> impl Strategy<Value = String> {
    let range = if latin1 {
        "[ -{}-\u{ff}]{0,12}"
    } else {
        "[^|\r\n\0]{0,12}"
    };
    proptest::string::string_regex(range).unwrap()
}

fn date_time() -> impl Strategy<Value = SipDateTime> {
    (1900i16..2100, 1i8..=12, 1i8..=28, 0i8..24, 0i8..60, 0i8..60)
        .prop_map(|(y, mo, d, h, mi, s)| SipDateTime::from_civil(date(y, mo, d).at(h, mi, s, 0)))
}

fn message(latin1: bool) -> impl Strategy<Value = Message> {
    let t = move || text(latin1);
    prop_oneof![
        (t(), t(), proptest::option::of(t())).prop_map(|(user, password, location)| {
            Message::Login(Login {
                uid_algorithm: b'0',
                pwd_algorithm: b'0',
                user,
                password,
                location,
            })
        }),
        any::<bool>().prop_map(|ok| Message::LoginResponse { ok }),
        (
            0u16..1000,
            date_time(),
            any::<[bool; 10]>(),
            t(),
            t(),
            proptest::option::of(t())
        )
            .prop_map(|(language, transaction_date, summary, ao, aa, ad)| {
                Message::PatronInformation(PatronInformation {
                    language,
                    transaction_date,
                    summary,
                    institution_id: ao,
                    patron_id: aa,
                    terminal_password: None,
                    patron_password: ad,
                })
            }),
        (
            any::<[bool; 14]>(),
            date_time(),
            proptest::array::uniform6(proptest::option::of(0u16..10000)),
            (t(), t(), t()),
            (
                proptest::option::of(any::<bool>()),
                proptest::option::of(any::<bool>())
            ),
            proptest::option::of((1000i16..2100, 1i8..=12, 1i8..=28)),
            proptest::option::of(t()),
            proptest::collection::vec(t(), 0..3),
        )
            .prop_map(|(status, td, counts, (ao, aa, ae), (bl, cq), pb, aq, af)| {
                Message::PatronInformationResponse(PatronInformationResponse {
                    patron_status: PatronStatus(status),
                    language: 1,
                    transaction_date: td,
                    counts,
                    institution_id: ao,
                    patron_id: aa,
                    personal_name: ae,
                    valid_patron: bl,
                    valid_patron_password: cq,
                    birth_date: pb.map(|(y, m, d)| date(y, m, d)),
                    home_library: aq,
                    screen_messages: af,
                })
            }),
        (0u8..3, 0u16..1000).prop_map(|(status_code, max_print_width)| {
            Message::ScStatus(ScStatus {
                status_code,
                max_print_width,
                protocol_version: "2.00".into(),
            })
        }),
        (
            any::<[bool; 6]>(),
            date_time(),
            t(),
            proptest::option::of(t())
        )
            .prop_map(|(f, dt, ao, am)| Message::AcsStatus(AcsStatus {
                online: f[0],
                checkin_ok: f[1],
                checkout_ok: f[2],
                renewal_policy: f[3],
                status_update_ok: f[4],
                offline_ok: f[5],
                timeout_period: 30,
                retries_allowed: 999,
                date_time_sync: dt,
                protocol_version: "2.00".into(),
                institution_id: ao,
                library_name: am,
                supported_messages: Some("YYYYYYYYYYYYYYYY".into()),
                terminal_location: None,
                screen_messages: vec![],
            })),
        Just(Message::RequestScResend),
        Just(Message::RequestAcsResend),
    ]
}

fn frame(latin1: bool) -> impl Strategy<Value = Frame> {
    (
        message(latin1),
        proptest::option::of(proptest::option::of(0u8..10)),
    )
        .prop_map(|(message, ed)| Frame {
            message,
            error_detection: ed.map(|sequence| ErrorDetection { sequence }),
        })
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes, Encoding::Utf8);
        let _ = decode(&bytes, Encoding::Latin1);
        let mut buf = bytes;
        while let Ok(Some(_)) = take_frame(&mut buf) {}
    }

    #[test]
    fn decode_never_panics_on_near_valid_frames(
        cut in 0usize..200,
        flip in 0usize..200,
        byte in any::<u8>(),
    ) {
        let mut bytes = KOHA_64[..cut.min(KOHA_64.len())].to_vec();
        if let Some(b) = bytes.get_mut(flip) {
            *b = byte;
        }
        let _ = decode(&bytes, Encoding::Utf8);
    }

    #[test]
    fn utf8_round_trip(frame in frame(false)) {
        let bytes = encode(&frame, Encoding::Utf8).unwrap();
        prop_assert_eq!(decode(&bytes, Encoding::Utf8).unwrap(), frame);
    }

    #[test]
    fn latin1_round_trip(frame in frame(true)) {
        let bytes = encode(&frame, Encoding::Latin1).unwrap();
        prop_assert_eq!(decode(&bytes, Encoding::Latin1).unwrap(), frame);
    }
}
