//! Colour on terminals, plain text elsewhere and under `NO_COLOR`.

use std::io::IsTerminal;

/// Whether to colour output.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    colour: bool,
}

impl Style {
    /// For what goes to stderr: colour only when stderr is a terminal and `NO_COLOR` is unset.
    pub fn stderr() -> Self {
        Self::when(std::io::stderr().is_terminal())
    }

    /// For what goes to stdout (`status > file` gets no escape codes).
    pub fn stdout() -> Self {
        Self::when(std::io::stdout().is_terminal())
    }

    fn when(terminal: bool) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            colour: !no_color && terminal,
        }
    }

    /// Whether colour is on.
    pub fn is_colour(&self) -> bool {
        self.colour
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// Green.
    pub fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }
    /// Red, bold.
    pub fn red(&self, text: &str) -> String {
        self.paint("1;31", text)
    }
    /// Yellow.
    pub fn yellow(&self, text: &str) -> String {
        self.paint("33", text)
    }
    /// Dim.
    pub fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }
}
