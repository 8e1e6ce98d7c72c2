//! The matrix as a table: one row per behaviour, one column per mode.

use std::fmt;

use super::{Cell, Matrix, Verdict};

impl Verdict {
    /// The word in the table.
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail(_) => "FAIL",
            Verdict::NotApplicable(_) => "n/a",
        }
    }
}

impl Matrix {
    /// The cells whose verdict `pick` selects, with the verdict's reason.
    fn reasons(&self, pick: impl Fn(&Verdict) -> bool) -> Vec<(&Cell, &str)> {
        self.cells
            .iter()
            .filter(|c| pick(&c.verdict))
            .filter_map(|c| match &c.verdict {
                Verdict::Fail(why) | Verdict::NotApplicable(why) => Some((c, why.as_str())),
                Verdict::Pass => None,
            })
            .collect()
    }
}

impl fmt::Display for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "polyvisor selftest: trap strategy {}; CPL 3 calls: {}", self.trap, self.cpl3)?;
        let mut header = format!("{:<13}", "behaviour");
        for mode in &self.modes {
            header.push_str(&format!(" {:<8}", mode.to_string()));
        }
        writeln!(f, "{}", header.trim_end())?;
        for &behaviour in &self.behaviours {
            let mut line = format!("{:<13}", behaviour.name());
            for &mode in &self.modes {
                let word = self.cell(mode, behaviour).map_or("-", |c| c.verdict.word());
                line.push_str(&format!(" {word:<8}"));
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        let notes = self.reasons(|v| matches!(v, Verdict::NotApplicable(_)));
        if !notes.is_empty() {
            writeln!(f, "not applicable:")?;
            for (c, why) in &notes {
                writeln!(f, "  {} {}: {why}", c.mode, c.behaviour)?;
            }
        }
        let failures = self.reasons(|v| matches!(v, Verdict::Fail(_)));
        if !failures.is_empty() {
            writeln!(f, "failures:")?;
            for (c, why) in &failures {
                let image = c.image.unwrap_or("-");
                writeln!(f, "  {} {} ({image}): {why}", c.mode, c.behaviour)?;
            }
        }
        let pass = self.cells.iter().filter(|c| c.verdict == Verdict::Pass).count();
        writeln!(
            f,
            "{} cells: {pass} pass, {} fail, {} not applicable",
            self.cells.len(),
            failures.len(),
            notes.len()
        )
    }
}
