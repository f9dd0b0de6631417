"""Finding where accuracy went: error after each pass, per layer, layer sensitivity, the HTML report.

* :mod:`.metrics`: SQNR and top-1 agreement, and reading any graph value as float;
* :mod:`.snapshot`: an instrument that keeps the float graph and the calibrated one;
* :mod:`.trace`: output error after every pass (an instrument);
* :mod:`.layers`: SQNR of every quantized tensor against its float twin;
* :mod:`.sensitivity`: each layer quantized alone / left float alone, and a skip list for an error budget;
* :mod:`.report`: one self-contained HTML page per run;
* :mod:`.tracking`: optional MLflow logging.
"""
