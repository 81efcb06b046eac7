//! The pages patrons read: start, login, deny and other messages. Bokmål first, English
//! by `Accept-Language` or `?lang=en`; plain words; labelled fields, visible focus, strong
//! contrast. Templates are compiled (askama) and escape everything they print.

use askama::Template;
use http::HeaderMap;

use policy::DenyReason;

/// Every fixed text of the pages, in one language.
#[derive(Debug)]
pub struct Texts {
    pub lang: &'static str,
    pub other_lang: &'static str,
    pub other_lang_name: &'static str,
    pub site: &'static str,
    pub start_title: &'static str,
    pub start_intro: &'static str,
    pub your_services: &'static str,
    pub no_services: &'static str,
    pub login: &'static str,
    pub logout: &'static str,
    pub login_title: &'static str,
    pub login_for: &'static str,
    pub library: &'static str,
    pub card: &'static str,
    pub card_hint: &'static str,
    pub pin: &'static str,
    pub no_card_login: &'static str,
    pub back_to_start: &'static str,
    pub denied_title: &'static str,
    pub wrong_pin: &'static str,
    pub card_blocked: &'static str,
    pub card_lost: &'static str,
    pub backend_down: &'static str,
    /// Our own shared store is down: logins and new entries cannot be made.
    pub store_down: &'static str,
    /// The logout could not be recorded (the store is down); the session may live on.
    pub logout_failed: &'static str,
    pub too_many_tries: &'static str,
    pub form_expired: &'static str,
    pub choose_library: &'static str,
    pub fill_in: &'static str,
    pub not_yet_title: &'static str,
    pub not_yet: &'static str,
    pub not_found_title: &'static str,
    pub not_found: &'static str,
    pub logged_out: &'static str,
    pub logged_in_as_patron: &'static str,
    pub walk_in_here: &'static str,
    pub error_title: &'static str,
    pub try_again: &'static str,
    pub entry_expired: &'static str,
    pub upstream_down: &'static str,
    pub upstream_slow: &'static str,
    pub bad_request: &'static str,
    pub sso_refused: &'static str,
}

pub static NB: Texts = Texts {
    lang: "nb",
    other_lang: "en",
    other_lang_name: "English",
    site: "Bibliotekets digitale tjenester",
    start_title: "Digitale tjenester fra biblioteket",
    start_intro: "Logg inn med lånekortet ditt for å bruke e-bøker, aviser, filmer og andre tjenester som biblioteket eller skolen din betaler for.",
    your_services: "Tjenester du kan bruke",
    no_services: "Du har ingen tjenester tilgjengelig akkurat nå.",
    login: "Logg inn",
    logout: "Logg ut",
    login_title: "Logg inn med lånekort",
    login_for: "Du logger inn for å bruke",
    library: "Bibliotek",
    card: "Lånekortnummer",
    card_hint: "Står på lånekortet ditt. Nasjonalt lånekort begynner med N.",
    pin: "PIN-kode",
    no_card_login: "Innlogging med lånekort er ikke satt opp her. Spør biblioteket ditt.",
    back_to_start: "Til startsiden",
    denied_title: "Ingen tilgang",
    wrong_pin: "Lånekortnummeret eller PIN-koden er feil. Prøv igjen.",
    card_blocked: "Lånekortet ditt er sperret. Ta kontakt med biblioteket.",
    card_lost: "Lånekortet er meldt tapt. Ta kontakt med biblioteket for å få et nytt.",
    backend_down: "Bibliotekets system svarer ikke akkurat nå. Prøv igjen om litt.",
    store_down: "Innlogging og nye tilkoblinger virker ikke akkurat nå på grunn av en feil hos oss. Prøv igjen om litt.",
    logout_failed: "Vi kunne ikke logge deg ut akkurat nå på grunn av en feil hos oss. Prøv igjen om litt, og lukk nettleseren hvis du bruker en felles maskin.",
    too_many_tries: "For mange forsøk. Vent litt før du prøver igjen.",
    form_expired: "Skjemaet var utløpt. Prøv å logge inn på nytt.",
    choose_library: "Velg biblioteket ditt.",
    fill_in: "Fyll inn lånekortnummer og PIN-kode.",
    not_yet_title: "Ikke tilgjengelig ennå",
    not_yet: "Denne tjenesten bruker en innloggingsmåte som ikke er tatt i bruk her ennå. Spør biblioteket ditt.",
    not_found_title: "Finner ikke siden",
    not_found: "Vi finner ikke denne siden. Sjekk adressen, eller gå til startsiden.",
    logged_out: "Du er logget ut.",
    logged_in_as_patron: "Du er logget inn med lånekort fra",
    walk_in_here: "Du er på bibliotekets nett og kan bruke disse tjenestene uten å logge inn:",
    error_title: "Noe gikk galt",
    try_again: "Prøv igjen",
    entry_expired: "Lenken er utløpt eller allerede brukt. Gå inn på tjenesten på nytt.",
    upstream_down: "Tjenesten svarer ikke akkurat nå. Prøv igjen om litt.",
    upstream_slow: "Tjenesten bruker for lang tid på å svare. Prøv igjen om litt.",
    bad_request: "Denne forespørselen kan vi ikke sende videre.",
    sso_refused: "Innloggingen fra tjenesten kunne ikke godtas. Gå tilbake til tjenesten og prøv igjen, eller bruk lenken fra biblioteket.",
};

pub static EN: Texts = Texts {
    lang: "en",
    other_lang: "nb",
    other_lang_name: "Norsk (bokmål)",
    site: "The library's digital services",
    start_title: "Digital services from the library",
    start_intro: "Log in with your library card to use e-books, newspapers, films and other services your library or school pays for.",
    your_services: "Services you can use",
    no_services: "You have no services available right now.",
    login: "Log in",
    logout: "Log out",
    login_title: "Log in with your library card",
    login_for: "You are logging in to use",
    library: "Library",
    card: "Library card number",
    card_hint: "It is on your library card. The national library card starts with N.",
    pin: "PIN",
    no_card_login: "Library-card login is not set up here. Ask your library.",
    back_to_start: "Back to the start page",
    denied_title: "No access",
    wrong_pin: "The card number or PIN is wrong. Please try again.",
    card_blocked: "Your library card is blocked. Please contact the library.",
    card_lost: "This library card has been reported lost. Please contact the library for a new one.",
    backend_down: "The library system is not answering right now. Please try again in a little while.",
    store_down: "Logging in and opening services do not work right now because of a fault on our side. Please try again in a little while.",
    logout_failed: "We could not log you out right now because of a fault on our side. Please try again in a little while, and close the browser if this is a shared computer.",
    too_many_tries: "Too many attempts. Please wait a little before trying again.",
    form_expired: "The form had expired. Please log in again.",
    choose_library: "Choose your library.",
    fill_in: "Enter your card number and PIN.",
    not_yet_title: "Not available yet",
    not_yet: "This service uses a login method that is not in use here yet. Ask your library.",
    not_found_title: "Page not found",
    not_found: "We cannot find this page. Check the address, or go to the start page.",
    logged_out: "You are logged out.",
    logged_in_as_patron: "You are logged in with a library card from",
    walk_in_here: "You are on the library's network and can use these services without logging in:",
    error_title: "Something went wrong",
    try_again: "Try again",
    entry_expired: "This link has expired or has already been used. Please open the service again.",
    upstream_down: "The service is not answering right now. Please try again in a little while.",
    upstream_slow: "The service is taking too long to answer. Please try again in a little while.",
    bad_request: "We cannot pass this request on.",
    sso_refused: "The login request from the service could not be accepted. Go back to the service and try again, or use the library's link.",
};

/// The language of a request: `?lang=` first, then the highest-weighted of bokmål (nb,
/// nn, no) and English in `Accept-Language`, else bokmål.
pub fn language(headers: &HeaderMap, query_lang: Option<&str>) -> &'static Texts {
    match query_lang {
        Some("en") => return &EN,
        Some("nb" | "no" | "nn") => return &NB,
        _ => {}
    }
    let Some(accept) = headers
        .get(http::header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
    else {
        return &NB;
    };
    let mut best: Option<(f32, bool)> = None;
    for part in accept.split(',') {
        let mut pieces = part.trim().split(';');
        let tag = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = pieces
            .find_map(|p| p.trim().strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let primary = tag.split('-').next().unwrap_or("");
        let english = match primary {
            "en" => true,
            "nb" | "nn" | "no" => false,
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
            best = Some((q, english));
        }
    }
    match best {
        Some((_, true)) => &EN,
        _ => &NB,
    }
}

/// The link to the same page in the other language.
pub fn other_lang_href(t: &Texts, base: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}lang={}", t.other_lang)
}

/// Whether the client asked for JSON rather than a page.
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            let a = a.to_ascii_lowercase();
            a.contains("application/json") && !a.contains("text/html")
        })
}

#[derive(Debug)]
pub struct ServiceLink {
    pub id: String,
    pub name: String,
    pub vendor: Option<String>,
}

#[derive(Debug, Template)]
#[template(path = "start.html")]
pub struct StartPage<'a> {
    pub t: &'static Texts,
    pub other_lang_href: String,
    pub who: Option<String>,
    pub services: Vec<ServiceLink>,
    pub logged_in: bool,
    pub csrf: &'a str,
}

#[derive(Debug, Template)]
#[template(path = "login.html")]
pub struct LoginPage<'a> {
    pub t: &'static Texts,
    pub other_lang_href: String,
    pub service: Option<&'a str>,
    pub service_name: Option<&'a str>,
    pub error: Option<&'a str>,
    /// (institution id, name)
    pub libraries: Vec<(String, String)>,
    pub selected: &'a str,
    pub csrf: &'a str,
    /// Deep-link path to keep through the login.
    pub path: Option<&'a str>,
    /// A federation endpoint to return to after the login.
    pub next: Option<&'a str>,
    /// The "Log in with Feide" button (label, href), when Feide is configured.
    pub feide: Option<(&'static str, String)>,
}

#[derive(Debug, Template)]
#[template(path = "message.html")]
pub struct MessagePage<'a> {
    pub t: &'static Texts,
    pub other_lang_href: String,
    pub heading: &'a str,
    pub message: &'a str,
    /// `alert` for problems, `note` for information.
    pub class: &'a str,
    pub action_href: Option<&'a str>,
    pub action_label: &'a str,
}

/// The deny message for a reason in the page's language.
pub fn deny_message(t: &Texts, reason: DenyReason) -> &'static str {
    if t.lang == "en" {
        reason.message_en()
    } else {
        reason.message_nb()
    }
}

/// The page texts of a Feide login, in one language.
#[derive(Debug)]
pub struct FeideTexts {
    pub button: &'static str,
    pub title: &'static str,
    pub down: &'static str,
    pub failed: &'static str,
    pub expired: &'static str,
    pub cancelled: &'static str,
    pub unknown_school: &'static str,
    pub no_role: &'static str,
    /// On the start page, before the institution's name.
    pub logged_in: &'static str,
}

pub static FEIDE_NB: FeideTexts = FeideTexts {
    button: "Logg inn med Feide",
    title: "Innlogging med Feide",
    down: "Feide svarer ikke akkurat nå. Prøv igjen om litt.",
    failed: "Innloggingen med Feide kunne ikke fullføres. Prøv igjen om litt.",
    expired: "Innloggingen var utløpt eller allerede brukt. Prøv å logge inn på nytt.",
    cancelled: "Du avbrøt innloggingen med Feide.",
    unknown_school: "Skolen din er ikke med i denne tjenesten.",
    no_role: "Feide-brukeren din gir ikke tilgang her. Tjenestene er for elever og ansatte ved skolene som er med.",
    logged_in: "Du er logget inn med Feide fra",
};

pub static FEIDE_EN: FeideTexts = FeideTexts {
    button: "Log in with Feide",
    title: "Logging in with Feide",
    down: "Feide is not answering right now. Please try again in a little while.",
    failed: "The login with Feide could not be completed. Please try again in a little while.",
    expired: "This login has expired or has already been used. Please log in again.",
    cancelled: "You cancelled the login with Feide.",
    unknown_school: "Your school is not part of this service.",
    no_role: "Your Feide user does not give access here. The services are for students and staff of the schools taking part.",
    logged_in: "You are logged in with Feide from",
};

/// The Feide texts in the page's language.
pub fn feide_texts(t: &Texts) -> &'static FeideTexts {
    if t.lang == "en" { &FEIDE_EN } else { &FEIDE_NB }
}

/// Renders a template; a template error (which compiled templates make all but
/// impossible) becomes a plain-text apology instead of a panic.
pub fn render(t: &impl Template) -> String {
    t.render()
        .unwrap_or_else(|_| "Noe gikk galt. / Something went wrong.".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(accept_language: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::ACCEPT_LANGUAGE,
            accept_language.parse().unwrap(),
        );
        h
    }

    #[test]
    fn bokmal_is_the_default_and_english_is_chosen_by_weight() {
        assert_eq!(language(&HeaderMap::new(), None).lang, "nb");
        assert_eq!(language(&headers("en-GB,en;q=0.9"), None).lang, "en");
        assert_eq!(
            language(&headers("nb-NO,nb;q=0.9,en;q=0.8"), None).lang,
            "nb"
        );
        assert_eq!(language(&headers("en;q=0.5,nn;q=0.9"), None).lang, "nb");
        assert_eq!(language(&headers("de,fr"), None).lang, "nb");
        assert_eq!(language(&headers("nb"), Some("en")).lang, "en");
    }

    #[test]
    fn json_only_when_asked_for_without_html() {
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCEPT, "application/json".parse().unwrap());
        assert!(wants_json(&h));
        h.insert(
            http::header::ACCEPT,
            "text/html,application/json;q=0.9".parse().unwrap(),
        );
        assert!(!wants_json(&h));
    }

    #[test]
    fn pages_escape_what_they_print() {
        let page = MessagePage {
            t: &NB,
            other_lang_href: "?lang=en".into(),
            heading: "<script>x</script>",
            message: "a & b",
            class: "alert",
            action_href: None,
            action_label: "",
        };
        let html = render(&page);
        // Escaped (askama writes &#60; or &lt;), never raw.
        assert!(!html.contains("<script>x"));
        assert!(
            html.contains("script&#62;x") || html.contains("script&gt;x"),
            "{html}"
        );
        assert!(!html.contains("a & b"));
        assert!(html.contains("lang=\"nb\""));
        assert!(html.contains("role=\"alert\""));
    }
}
