$PROBLEM One compartment, oral: a saturable creatinine-clearance effect kept as written
$INPUT ID TIME AMT DV CMT EVID MDV WT CRCL SEX AGE SITE
$DATA study.csv IGNORE=#
$SUBROUTINE ADVAN2 TRANS2
$PK
TVCL = THETA(1) * (1 + THETA(4) * CRCL / (CRCL + THETA(5)))
CL = TVCL * EXP(ETA(1))
V = THETA(2) * EXP(ETA(2))
KA = THETA(3)
S2 = V
$ERROR
Y = F + F*EPS(1)
$THETA (0, 2) (0, 40) (0, 1.2) (0, 1.5) (0, 50)
$OMEGA 0.09 0.04
$SIGMA 0.0225
$ESTIMATION METHOD=1 INTERACTION
