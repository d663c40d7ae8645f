//! A config file's TOML error, said without the file's secrets.
//!
//! toml's own message quotes the line it failed on, and serde's quotes the
//! string it refused (`invalid type: string "…", expected a sequence`).
//! The config file holds secrets (`api-token`, `token-secret`,
//! `previous-token-secrets`, plugin settings, templates' `env`), and the
//! message is logged (the error Spawner stops with): a misspelt key on the
//! line of a secret, a backslash in one or a missing quote put it in the
//! log. So the line is shown with its keys and punctuation only: every
//! value, string, and comment on it is masked, one `*` per character, so
//! that the caret still points where toml does.

/// The message for `error` in `text`: where (line and column, the masked
/// line and a caret under the span), then what, without quoted strings.
pub(super) fn describe(text: &str, error: &toml::de::Error) -> String {
    let mut message = without_quoted_strings(error.message().trim_end());
    // `listen = 127.0.0.1:8080` starts as a number and fails as one; with
    // the value masked, nothing else would say what is wrong.
    if message.starts_with("invalid float") || message.starts_with("invalid integer") {
        message.push_str(" (a value that is not a number needs quotes: key = \"…\")");
    }
    let Some(span) = error.span() else { return message };
    let (Some(before), Some(spanned)) = (text.get(..span.start), text.get(span.start..span.end.max(span.start))) else {
        return message;
    };
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[span.start..].find('\n').map_or(text.len(), |i| span.start + i);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    let width = spanned.lines().next().unwrap_or_default().chars().count().max(1);
    let shown = masked(text, line_start, line_end);
    let gutter = " ".repeat(line.to_string().len());
    format!(
        "TOML parse error at line {line}, column {column}\n{gutter} |\n{line} | {shown}\n{gutter} | {}{}\n{message}",
        " ".repeat(column - 1),
        "^".repeat(width)
    )
}

/// Where the scanner is.
#[derive(Clone, Copy, PartialEq)]
enum In {
    Code,
    Basic,
    Literal,
    MultiBasic,
    MultiLiteral,
    Comment,
}

/// The line of `text` from byte `from` to `to`, with everything but keys,
/// table headers, punctuation and quote marks masked. The whole text up to
/// it is scanned, so a line inside a multi-line string is masked whole.
fn masked(text: &str, from: usize, to: usize) -> String {
    let mut out = String::new();
    let mut state = In::Code;
    // Open `{` and `[` of values (across lines: arrays and, in TOML 1.1,
    // inline tables may span several).
    let mut open: Vec<char> = Vec::new();
    let mut header = false;
    let mut at_line_start = true;
    // Where a key may stand: a line's start outside any value (and not
    // after a `=` still waiting for its value), after an inline table's
    // `{` or `,`. A word is shown only there, and only if `=` follows it,
    // decided at its first character: a value is never taken for a key
    // (`c2Vj…==` is one).
    let mut key_place = true;
    let mut awaiting_value = false;
    // Whether the word under way is shown (`None` between words).
    let mut word: Option<bool> = None;
    let mut chars = text[..to].char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let rest = &text[i..to];
        let triple = rest.starts_with("\"\"\"") || rest.starts_with("'''");
        // Whether the character is shown as it is; how many characters
        // after it go with it (the rest of a `"""`, an escaped one).
        let (mut plain, mut with) = (false, 0);
        match state {
            In::Code => {
                if at_line_start && !c.is_whitespace() {
                    header = c == '[' && open.is_empty() && !awaiting_value;
                    key_place = match open.last() {
                        None => !header && !awaiting_value,
                        Some('{') => key_place,
                        Some(_) => false,
                    };
                    at_line_start = false;
                }
                let structural = c.is_whitespace() || matches!(c, '=' | ',' | '{' | '}' | '[' | ']');
                if !structural && c != '#' {
                    awaiting_value = false;
                }
                plain = true;
                match c {
                    '"' | '\'' if triple => (state, with) = (if c == '"' { In::MultiBasic } else { In::MultiLiteral }, 2),
                    '"' => state = In::Basic,
                    '\'' => state = In::Literal,
                    '#' => state = In::Comment,
                    // A header's name is shown; whatever follows it there is not.
                    ']' if header => {
                        if !rest.starts_with("]]") {
                            (header, key_place) = (false, false);
                        }
                    }
                    _ if header => {}
                    '=' => (key_place, awaiting_value) = (false, true),
                    '{' | '[' => {
                        open.push(c);
                        key_place = c == '{';
                    }
                    '}' | ']' => {
                        open.pop();
                        key_place = false;
                    }
                    ',' => key_place = open.last() == Some(&'{'),
                    _ if c.is_whitespace() => {}
                    // A word, or what is stuck to one (`a/b`, `a+b`), takes
                    // the word's fate; anything else stuck to nothing is
                    // masked.
                    _ => plain = *word.get_or_insert_with(|| is_word(c) && key_place && is_key(rest)),
                }
                if structural || matches!(c, '"' | '\'' | '#') {
                    word = None;
                }
            }
            In::Basic | In::MultiBasic if c == '\\' => with = usize::from(chars.peek().is_some_and(|(_, n)| *n != '\n')),
            In::Basic if c == '"' => (state, plain) = (In::Code, true),
            In::Literal if c == '\'' => (state, plain) = (In::Code, true),
            In::MultiBasic if triple && c == '"' => (state, plain, with) = (In::Code, true, 2),
            In::MultiLiteral if triple && c == '\'' => (state, plain, with) = (In::Code, true, 2),
            _ => {}
        }
        if c == '\n' {
            plain = true;
            at_line_start = true;
            header = false;
            // Strings of one line and comments end with it (an unclosed
            // string is the error toml reports).
            if matches!(state, In::Basic | In::Literal | In::Comment) {
                state = In::Code;
            }
        }
        let shown = |c: char| if plain { c } else { '*' };
        if i >= from {
            out.push(shown(c));
        }
        for _ in 0..with {
            if let Some((j, n)) = chars.next()
                && j >= from
            {
                out.push(shown(n));
            }
        }
    }
    out
}

/// A character of a bare key or of a bare value (a number, `true`, a date).
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '+')
}

/// Whether the bare word that starts `rest` is a key: `=` follows it.
fn is_key(rest: &str) -> bool {
    let after = rest.trim_start_matches(|c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    after.trim_start_matches([' ', '\t']).starts_with('=')
}

/// `message` with the values serde quotes said by their kind: `string
/// "…"` (Rust's escapes inside) as `a string`, ``integer `…` `` as `an
/// integer`, and so on, an unknown variant without the value given. Field
/// names stay (they are the file's keys), and the choices Spawner offers.
fn without_quoted_strings(message: &str) -> String {
    const VALUES: [(&str, char, &str); 6] = [
        ("string \"", '"', "a string"),
        ("unknown variant `", '`', "unknown variant"),
        ("integer `", '`', "an integer"),
        ("floating point `", '`', "a number"),
        ("character `", '`', "a character"),
        ("boolean `", '`', "a boolean"),
    ];
    let mut out = String::new();
    let mut rest = message;
    while let Some((at, (opening, close, said))) = VALUES.iter().filter_map(|v| rest.find(v.0).map(|at| (at, v))).min_by_key(|(at, _)| *at)
    {
        out.push_str(&rest[..at]);
        out.push_str(said);
        let mut inside = rest[at + opening.len()..].char_indices();
        let mut end = None;
        while let Some((i, c)) = inside.next() {
            if c == '\\' && *close == '"' {
                inside.next();
            } else if c == *close {
                end = Some(at + opening.len() + i + 1);
                break;
            }
        }
        rest = end.map_or("", |e| &rest[e..]);
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "S3CRET-0123456789abcdef";

    fn error_for(text: &str) -> String {
        let e = toml::from_str::<crate::config::Config>(text).unwrap_err();
        describe(text, &e)
    }

    #[test]
    fn an_unquoted_address_is_told_to_take_quotes() {
        let e = error_for("listen = 127.0.0.1:8091\n");
        assert!(
            e.contains("1 | listen = **************") && e.ends_with("(a value that is not a number needs quotes: key = \"…\")"),
            "{e}"
        );
        let e = error_for("listen = localhost:8091\n");
        assert!(e.contains("string values must be quoted") && !e.contains("needs quotes"), "{e}");
    }

    #[test]
    fn no_secret_on_the_line_is_shown() {
        for text in [
            format!("listen = \"127.0.0.1:1\"\napitoken = \"{SECRET}\"\n"),
            format!("previous-token-secrets = \"{SECRET}\"\n"),
            format!("token-secret = \"{SECRET}\\q\"\n"),
            format!("api-token = \"{SECRET}\n"),
            format!("api-token = {SECRET}\n"),
            format!("api-token = [\"{SECRET}\"]\n"),
            format!("api-token = \"{SECRET}\" junk\n"),
            format!("token-secret = '{SECRET}' # and {SECRET}\nx = 1\n"),
            format!("[plugins.auth]\nsettings = {{ secret = \"{SECRET}\", owner-only = tru }}\n"),
            format!("[templates.a]\ncommand = \"x\"\nenv = {{ KEY = \"\"\"\n{SECRET}\n\"\"\" }}\nbogus = 1\n"),
            format!("api-token = \"\"\"{SECRET}\n{SECRET}\"\"\" x\n"),
            // Bare values: never taken for keys, whatever follows them.
            format!("api-token = {SECRET}==\n"),
            format!("[templates.a]\ncommand = \"x\"\nenv.DB_PASS = {SECRET}=more\n"),
            "[templates.a]\ncommand = \"x\"\nenv = { DB_PASSWORD = 90123456789 }\n".to_string(),
            format!("previous-token-secrets = [\n  [{SECRET}]],\n]\n"),
            format!("[plugins.auth]\nsettings = {{ a = 1, b = {SECRET}= }}\n"),
            format!("api-token = \"{SECRET}\"\r\nbogus = 1\r\n"),
            format!("token-secret =\n  {SECRET}==\n"),
            format!("api-token = a/{SECRET} = 1\n"),
            format!("api-token = S3/{SECRET}\n"),
            format!("[plugins.auth] x = {SECRET}\n"),
            format!("[proxy]\nforwarded-proto = \"{SECRET}\"\n"),
        ] {
            let e = error_for(&text);
            assert!(!e.contains("S3CRET") && !e.contains("0123456789"), "{text:?} gave:\n{e}");
            assert!(e.starts_with("TOML parse error at line "), "{e}");
        }
    }

    #[test]
    fn keys_and_headers_stay_and_the_caret_points_where_toml_does() {
        let e = error_for(&format!("listen = \"127.0.0.1:1\"\napitoken = \"{SECRET}\"\n"));
        assert!(e.contains("2 | apitoken = \"***********************\"\n  | ^^^^^^^^\nunknown field `apitoken`"), "{e}");
        let e = error_for(&format!("[plugins.auth]\nsettings = {{ secret = \"{SECRET}\", owner-only = tru }}\n"));
        assert!(e.contains("settings = { secret = \"***********************\", owner-only = *** }"), "{e}");
        let e = error_for("[plugins.auht]\nfile = \"a.wasm\"\n");
        assert!(e.contains("1 | [plugins.auht]") && e.contains("unknown field `auht`"), "{e}");
        let e = error_for(&format!("previous-token-secrets = \"{SECRET}\"\n"));
        assert!(e.ends_with("invalid type: a string, expected a sequence"), "{e}");
    }

    #[test]
    fn quoted_strings_leave_the_message_whole() {
        assert_eq!(without_quoted_strings(r#"invalid type: string "a\"b", expected u32"#), "invalid type: a string, expected u32");
        assert_eq!(without_quoted_strings(r#"x string "a" and string "b" y"#), "x a string and a string y");
        assert_eq!(without_quoted_strings(r#"cut string "abc"#), "cut a string");
        assert_eq!(without_quoted_strings("unknown field `apitoken`"), "unknown field `apitoken`");
        assert_eq!(
            without_quoted_strings("invalid type: integer `83927461`, expected a string"),
            "invalid type: an integer, expected a string"
        );
        assert_eq!(
            without_quoted_strings("unknown variant `htps`, expected `http` or `https`"),
            "unknown variant, expected `http` or `https`"
        );
    }
}
