//! engramd's options from three sources besides their defaults: a TOML file, `ENGRAM_*`
//! environment variables and flags, each overriding the one before. The flags' clap
//! definitions are the single list of options: a file's key is an option's long name
//! (`connections-max = 64`), its variable `ENGRAM_` and the name in capitals with `_`
//! for `-` (`ENGRAM_CONNECTIONS_MAX`). A file's values become the options' defaults
//! before clap reads the flags and the environment, so clap's own order does the rest.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// The configuration file engramd reads from its data directory unless `--config`
/// names another.
pub const CONFIG_FILE: &str = "engram.toml";

/// Options that only steer this start and are no configuration of the node.
const NOT_CONFIGURATION: &[&str] = &["help", "version", "config", "print-config"];

/// What a value of an option is written as in the file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Boolean,
    Integer,
    String,
}

impl Kind {
    fn of(arg: &Arg) -> Kind {
        use std::any::TypeId;
        if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
            return Kind::Boolean;
        }
        let type_id = arg.get_value_parser().type_id();
        let integers = [
            TypeId::of::<u16>(),
            TypeId::of::<u32>(),
            TypeId::of::<u64>(),
            TypeId::of::<usize>(),
            TypeId::of::<i64>(),
        ];
        if integers.iter().any(|integer| type_id == *integer) {
            Kind::Integer
        } else {
            Kind::String
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Boolean => "a boolean (true or false)",
            Kind::Integer => "an integer",
            Kind::String => "a string",
        }
    }
}

/// The options a file and the environment may set: every long option but those of
/// [`NOT_CONFIGURATION`].
fn configurable(arg: &Arg) -> Option<&str> {
    let long = arg.get_long()?;
    (!NOT_CONFIGURATION.contains(&long)).then_some(long)
}

/// The environment variable of the option `long`.
pub fn variable(long: &str) -> String {
    format!("ENGRAM_{}", long.to_ascii_uppercase().replace('-', "_"))
}

/// `command` with an `ENGRAM_*` variable for every configurable option.
pub fn with_environment(command: Command) -> Command {
    command.mut_args(|arg| match configurable(&arg).map(variable) {
        Some(name) => arg.env(name),
        None => arg,
    })
}

/// A configuration file as read: where it was, and its options.
pub struct File {
    pub path: PathBuf,
    table: toml::Table,
}

impl File {
    /// Reads the file at `path`; a missing file is `None` unless `required`.
    pub fn read(path: &Path, required: bool) -> Result<Option<File>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            // No file, or no data directory (the start explains that one).
            Err(error)
                if !required
                    && matches!(
                        error.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                    ) =>
            {
                return Ok(None);
            }
            Err(error) => return Err(format!("reading {}: {error}", path.display())),
        };
        let table = text
            .parse::<toml::Table>()
            .map_err(|error| format!("{}: {}", path.display(), error.to_string().trim_end()))?;
        Ok(Some(File {
            path: path.to_path_buf(),
            table,
        }))
    }

    /// The options the file sets.
    pub fn keys(&self) -> BTreeSet<&str> {
        self.table.keys().map(String::as_str).collect()
    }

    /// `command` with the file's values as its options' defaults. Fails, naming the key,
    /// on a key that is no option, a value of the wrong type, or one the option refuses.
    pub fn apply(&self, command: Command) -> Result<Command, String> {
        let path = self.path.display();
        let mut defaults = std::collections::HashMap::new();
        for (key, value) in &self.table {
            let arg = command
                .get_arguments()
                .find(|arg| configurable(arg) == Some(key))
                .ok_or_else(|| {
                    format!(
                        "{path}: unknown key `{key}` (a key is one of engramd's options without its dashes; `engramd --help` lists them)"
                    )
                })?;
            let kind = Kind::of(arg);
            let text = match (kind, value) {
                (Kind::Boolean, toml::Value::Boolean(value)) => value.to_string(),
                (Kind::Integer, toml::Value::Integer(value)) => value.to_string(),
                (Kind::String, toml::Value::String(value)) => value.clone(),
                _ => return Err(format!("{path}: `{key}` must be {}", kind.name())),
            };
            if kind != Kind::Boolean {
                // The option's own parser judges the value, as it would the flag's.
                Command::new("engramd")
                    .arg(
                        Arg::new(arg.get_id().clone())
                            .long(key.to_owned())
                            .value_parser(arg.get_value_parser().clone()),
                    )
                    .try_get_matches_from(["engramd", &format!("--{key}={text}")])
                    .map_err(|error| {
                        let message = error.to_string();
                        let first = message.lines().next().unwrap_or_default();
                        format!("{path}: `{key}`: {}", first.trim_start_matches("error: "))
                    })?;
            }
            defaults.insert(arg.get_id().clone(), text);
        }
        // In place, so that the options keep their order (`--help`, `render`).
        Ok(command.mut_args(|arg| match defaults.remove(arg.get_id()) {
            Some(text) => arg.default_value(text),
            None => arg,
        }))
    }
}

/// The effective configuration as a TOML file engramd would read, each option with the
/// source of its value: a flag, its environment variable, the file, or the default.
/// An option without a value (e.g. `nats` when the node runs alone) is a comment.
pub fn render(command: &Command, matches: &ArgMatches, file: Option<&File>) -> String {
    let from_file = file.map(File::keys).unwrap_or_default();
    let mut text = String::from(
        "# engramd's effective configuration: flags override ENGRAM_* variables, which\n\
         # override the configuration file, which overrides the defaults.\n",
    );
    if let Some(file) = file {
        text.push_str(&format!("# file: {}\n", file.path.display()));
    }
    for arg in command.get_arguments() {
        let Some(key) = configurable(arg) else {
            continue;
        };
        let id = arg.get_id().as_str();
        let raw = matches
            .get_raw(id)
            .and_then(|mut values| values.next())
            .map(|value| value.to_string_lossy().into_owned());
        let Some(raw) = raw else {
            text.push_str(&format!("# {key} is not set\n"));
            continue;
        };
        let value = match Kind::of(arg) {
            Kind::Boolean => toml::Value::Boolean(matches.get_flag(id)),
            Kind::Integer => raw
                .parse::<i64>()
                .map(toml::Value::Integer)
                .unwrap_or(toml::Value::String(raw)),
            // A NATS URL may hold credentials (which the start then refuses): never shown.
            Kind::String if id == "nats" => toml::Value::String(engram_fleet::shown_url(&raw)),
            Kind::String => toml::Value::String(raw),
        };
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag".to_owned(),
            Some(ValueSource::EnvVariable) => variable(key),
            _ if from_file.contains(key) => "file".to_owned(),
            _ => "default".to_owned(),
        };
        text.push_str(&format!("{key} = {value}  # {source}\n"));
    }
    text
}
