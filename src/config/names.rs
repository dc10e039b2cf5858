//! Closed sets of names a config key chooses from (`auth = "keys"`,
//! `mode = "deterministic"`): [`named_enum!`] declares the enum and its one
//! table of names together, and [`choose`] reads a key against that table.
//! Parsing and labelling (metrics, logs, the admin API) both use the table, so
//! a name cannot be spelled two ways.

/// Declares an enum whose variants are written `Variant = "name"`: the one table
/// of names, used by `NAMES` (every value in order), `name` (an exhaustive
/// match, so a variant without a name does not compile) and `parse`.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $enum:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $name:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $enum {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $enum {
            /// Every value with its name in the config file, in declaration order.
            pub const NAMES: &'static [($enum, &'static str)] = &[$( ($enum::$variant, $name) ),+];

            /// The name in the config file (also the label in metrics and logs).
            pub fn name(self) -> &'static str {
                match self {
                    $( $enum::$variant => $name ),+
                }
            }

            /// The value with this name; `None` for any other string.
            pub fn parse(name: &str) -> Option<$enum> {
                Self::NAMES.iter().find(|(_, n)| *n == name).map(|(v, _)| *v)
            }
        }

        impl std::fmt::Display for $enum {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

/// The value `names` gives `value`, read at `key`; any other string is reported
/// with the allowed names (`key: `x` is not one of a, b`) and gives `None`.
pub(super) fn choose<T: Copy>(
    key: &str,
    value: &str,
    names: &[(T, &str)],
    errors: &mut Vec<String>,
) -> Option<T> {
    let found = names.iter().find(|(_, n)| *n == value).map(|(v, _)| *v);
    if found.is_none() {
        let allowed: Vec<&str> = names.iter().map(|(_, n)| *n).collect();
        errors.push(format!(
            "{key}: `{value}` is not one of {}",
            allowed.join(", ")
        ));
    }
    found
}
