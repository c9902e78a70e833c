# R did_multiplegt_dyn on a CSV panel (columns y, id, t, d and the named controls), for the reference
# values of tests/test_did_multiplegt_controls.py. Usage:
#   Rscript did_multiplegt_dyn_run.R R_SOURCE_DIR panel.csv CONTROLS|none out.csv ["extra = args"]
# R_SOURCE_DIR: the R/R folder of github.com/chaisemartinPackages/did_multiplegt_dyn (commit a883607).
# Needs data.table, dplyr, MASS, plm, car; fixest and ggplot2 are replaced by the stand-ins below.
args <- commandArgs(trailingOnly = TRUE)
suppressMessages({library(data.table); library(dplyr); library(MASS); library(plm); library(car)})
lag <- dplyr::lag; filter <- dplyr::filter
Ginv <- MASS::ginv
did_multiplegt_dyn_graph <- function(...) list()  # no ggplot2 here; graphs are not compared
feols <- function(form, data, weights) {
  # stand-in for fixest::feols(y ~ x1 + ... - 1 | fe, weights = w) used by the controls option:
  # the same weighted least squares with the fixed effects as dummies (lm); predictions are NA
  # for fixed-effect levels absent from the estimation sample, as fixest's
  wname <- deparse(substitute(weights))
  f <- paste(deparse(form), collapse = "")
  p <- strsplit(f, "\\|")[[1]]
  fe <- trimws(p[2])
  d <- as.data.frame(data)
  d$fe__ <- factor(d[[fe]])
  fit <- lm(as.formula(paste(gsub("- 1", "", p[1]), "+ fe__ - 1")), data = d, weights = d[[wname]])
  structure(list(fit = fit, fe = fe, levels = levels(droplevels(model.frame(fit)$fe__))), class = "stubfe")
}
predict.stubfe <- function(object, newdata, ...) {
  nd <- as.data.frame(newdata)
  cf <- coef(object$fit)
  xs <- names(cf)[!startsWith(names(cf), "fe__")]
  lev <- as.character(nd[[object$fe]])
  fe <- cf[paste0("fe__", lev)]
  out <- as.numeric(fe)
  for (x in xs) out <- out + cf[[x]] * nd[[x]]
  out
}
for (f in c("globals.R", "progressBar.R", "did_multiplegt_main.R", "did_multiplegt_dyn_core.R",
            "did_multiplegt_dyn.R", "did_multiplegt_bootstrap.R", "did_multiplegt_dyn_dfs.R",
            "did_multiplegt_dyn_normweights.R", "did_save_sample.R", "did_multiplegt_dyn_by_check.R",
            "did_multiplegt_by_path.R", "did_multiplegt_dyn_design.R"))
  source(file.path(args[1], f))
df <- read.csv(args[2])
ctl <- if (args[3] != "none") strsplit(args[3], ",")[[1]] else NULL
extra <- if (length(args) > 4) args[5] else ""
res <- eval(parse(text = paste0("did_multiplegt_dyn(df, 'y', 'id', 't', 'd', effects = 3, placebo = 2, controls = ctl, graph_off = TRUE", if (nchar(extra)) paste0(", ", extra) else "", ")")))
r <- res$results
print(r$Effects); print(r$Placebos)
out <- rbind(r$Effects[, c(1, 2, 5, 6)], r$Placebos[, c(1, 2, 5, 6)])
if (!is.null(r$ATE)) out <- rbind(out, ATE = r$ATE[c(1, 2, 5, 6)])
write.csv(out, args[4])
