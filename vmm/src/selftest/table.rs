//! The matrix as a table: one row per behaviour, one column per mode.

use std::fmt;

use super::{Matrix, Verdict};

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
        let notes: Vec<_> = self
            .cells
            .iter()
            .filter_map(|c| match &c.verdict {
                Verdict::NotApplicable(why) => Some((c, why)),
                _ => None,
            })
            .collect();
        if !notes.is_empty() {
            writeln!(f, "not applicable:")?;
            for (c, why) in notes {
                writeln!(f, "  {} {}: {why}", c.mode, c.behaviour)?;
            }
        }
        let failures: Vec<_> = self
            .cells
            .iter()
            .filter_map(|c| match &c.verdict {
                Verdict::Fail(why) => Some((c, why)),
                _ => None,
            })
            .collect();
        if !failures.is_empty() {
            writeln!(f, "failures:")?;
            for (c, why) in &failures {
                let image = c.image.unwrap_or("-");
                writeln!(f, "  {} {} ({image}): {why}", c.mode, c.behaviour)?;
            }
        }
        let pass = self.cells.iter().filter(|c| c.verdict == Verdict::Pass).count();
        let na = self.cells.iter().filter(|c| matches!(c.verdict, Verdict::NotApplicable(_)));
        writeln!(
            f,
            "{} cells: {pass} pass, {} fail, {} not applicable",
            self.cells.len(),
            failures.len(),
            na.count()
        )
    }
}
